"""Admins of other packages re-registered on the one audited base, so the same permission rules hold
everywhere (metering.admin.common.AuditedModelAdmin):

- django-celery-beat's schedules and periodic tasks: viewing is open to the roles, every
  action (enable, disable, toggle, run) needs `change_periodictask`;
- auth's users and groups: the Auditor reads who holds which role (access reviews); only
  superusers add, change or delete users and groups (a user who may change users may make
  anyone, himself included, a superuser).
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import admin as auth_admin
from django.contrib.auth.models import Group, User
from django.utils.translation import gettext_lazy as _
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from metering.admin import AuditedModelAdmin

# --- django-celery-beat ------------------------------------------------------------------------


class PeriodicTaskAdmin(AuditedModelAdmin, beat_admin.PeriodicTaskAdmin):
    """The schedule (synced from settings): every action changes it or runs a task."""

    @admin.action(permissions=["change"], description=_("Enable selected tasks"))
    def enable_tasks(self, request, queryset):
        return super().enable_tasks(request, queryset)

    @admin.action(permissions=["change"], description=_("Disable selected tasks"))
    def disable_tasks(self, request, queryset):
        return super().disable_tasks(request, queryset)

    @admin.action(permissions=["change"], description=_("Toggle activity of selected tasks"))
    def toggle_tasks(self, request, queryset):
        return super().toggle_tasks(request, queryset)

    @admin.action(permissions=["change"], description=_("Run selected tasks"))
    def run_tasks(self, request, queryset):
        return super().run_tasks(request, queryset)


class ClockedScheduleAdmin(AuditedModelAdmin, beat_admin.ClockedScheduleAdmin):
    pass


class CrontabScheduleAdmin(AuditedModelAdmin, beat_admin.CrontabScheduleAdmin):
    pass


class SolarScheduleAdmin(AuditedModelAdmin, beat_admin.SolarScheduleAdmin):
    pass


class IntervalScheduleAdmin(AuditedModelAdmin, beat_admin.IntervalScheduleAdmin):
    pass


# --- users and groups --------------------------------------------------------------------------


class SuperuserWritesOnly:
    """Reading needs the view permission; writing needs a superuser, whatever the groups say."""

    def has_add_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser


class UserAdmin(SuperuserWritesOnly, AuditedModelAdmin, auth_admin.UserAdmin):
    list_display = (
        "username",
        "email",
        "first_name",
        "last_name",
        "is_staff",
        "is_superuser",
        "is_active",
        "role_list",
        "last_login",
    )
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="Roles (groups)")
    def role_list(self, obj: User) -> str:
        return ", ".join(sorted(g.name for g in obj.groups.all())) or "-"

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # Read-only pages show fields as stored: leave the password hash out entirely.
        return [
            (name, {**opts, "fields": [f for f in opts["fields"] if f != "password"]})
            for name, opts in fieldsets
        ]


class GroupAdmin(SuperuserWritesOnly, AuditedModelAdmin, auth_admin.GroupAdmin):
    list_display = ("name", "member_count")

    def get_queryset(self, request):
        from django.db.models import Count

        return super().get_queryset(request).annotate(_members=Count("user", distinct=True))

    @admin.display(description="Members", ordering="_members")
    def member_count(self, obj: Group) -> int:
        return obj._members


for model, model_admin in (
    (PeriodicTask, PeriodicTaskAdmin),
    (ClockedSchedule, ClockedScheduleAdmin),
    (CrontabSchedule, CrontabScheduleAdmin),
    (SolarSchedule, SolarScheduleAdmin),
    (IntervalSchedule, IntervalScheduleAdmin),
    (User, UserAdmin),
    (Group, GroupAdmin),
):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)

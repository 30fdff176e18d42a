"""Shared admin pieces: a read-only admin, the audited-change mixin (every change asks why),
the change-reason form, and JSON display."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.utils.html import format_html

# --- shared pieces ---------------------------------------------------------------------------


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Rows written only by services (events, checks, provider answers): staff read them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AuditedAdminMixin:
    """Actions refuse with 403 when not permitted; changes to existing records need a reason."""

    change_form_class: type[forms.ModelForm] | None = None

    def changelist_view(self, request, extra_context=None):
        action = request.POST.get("action") if request.method == "POST" else None
        if action and action not in self.get_actions(request):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if (
            obj is not None
            and self.change_form_class is not None
            and self.has_change_permission(request, obj)
        ):
            kwargs["form"] = self.change_form_class
        return super().get_form(request, obj, change=change, **kwargs)

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        # django-simple-history saves a POSTed revert for anyone who may view the history;
        # reverting is a change, so it needs the change permission.
        if request.method == "POST" and not self.has_change_permission(request):
            raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)

    def save_model(self, request, obj, form, change):
        reason = form.cleaned_data.get("change_reason") if change else None
        if reason:
            obj._change_reason = reason
        super().save_model(request, obj, form, change)


def change_reason_form(model_cls: type) -> type[forms.ModelForm]:
    """A ModelForm for `model_cls` with a required 'why' recorded in the history."""

    class ChangeReasonForm(forms.ModelForm):
        change_reason = forms.CharField(
            label="Reason for this change",
            max_length=100,
            help_text="Recorded in the history with your name, for auditors.",
        )

        class Meta:
            model = model_cls
            # The admin narrows this to its own fieldsets.
            fields = "__all__"  # noqa: DJ007

    ChangeReasonForm.__name__ = f"{model_cls.__name__}ChangeForm"
    return ChangeReasonForm


def pretty_json(value) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


def _copy_saved(saved, *, into) -> None:
    """Make the admin's unsaved instance the row a service saved (the admin logs and links it)."""
    for field in saved._meta.concrete_fields:
        setattr(into, field.attname, getattr(saved, field.attname))
    into._state.adding = False
    into._state.db = saved._state.db

"""The admin bases every admin in the project uses (AuditedModelAdmin, ReadOnlyModelAdmin,
AuditedHistoryAdmin: permissions and reasons in one place), the change-reason form, and JSON
display."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core import checks
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db import models
from django.shortcuts import get_object_or_404
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from metering.admin import display

# --- the admin bases: every admin in the project is one of these -----------------------------


class AuditedModelAdmin(admin.ModelAdmin):
    """The permission rules, in one place, for every admin (ours and re-registered ones).

    - Every action declares what it needs (`@admin.action(permissions=[...])`) and the user
      needs all of it (Django's default: any). "add", "change", "delete" and "view" are the
      model's Django permissions (`<app_label>.change_<model_name>`), even on a read-only
      admin; any other name `p` is the admin's `has_<p>_permission`, which by convention checks
      the Django permission `<app_label>.<p>_<model_name>` (`action_permission(p)`; e.g.
      `replay` on quarantined events is `metering.replay_quarantinedevent`). An action that
      declares nothing needs "change" (Django would offer it to everyone who may view).
    - A POSTed action the user may not run is a 403 (Django quietly re-renders the list).
    - `read_only = True`: rows written only by services; nobody adds, changes or deletes them
      here (actions still run, each under its own declared permission).
    """

    read_only = False

    def has_add_permission(self, request):
        return False if self.read_only else super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return False if self.read_only else super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False if self.read_only else super().has_delete_permission(request, obj)

    def action_permission(self, name: str) -> str:
        """The Django permission an action permission name stands for."""
        return f"{self.opts.app_label}.{name}_{self.opts.model_name}"

    def _filter_actions_by_permissions(self, request, actions):
        allowed = []
        for action in actions:
            func, name = action[0], action[1]
            needed = getattr(func, "allowed_permissions", None) or ("change",)
            if name == "delete_selected" and not self.has_delete_permission(request):
                continue
            if all(self._may_run(request, p) for p in needed):
                allowed.append(action)
        return allowed

    def _may_run(self, request, permission: str) -> bool:
        check = getattr(self, f"has_{permission}_permission")
        if permission in ("add", "change", "delete", "view"):
            # The model's permission, and the admin's own rule unless the admin is read-only
            # (its rows stay read-only; its actions run under the model's permission).
            if not request.user.has_perm(self.action_permission(permission)):
                return False
            return self.read_only or check(request)
        return check(request)

    def check(self, **kwargs):
        errors = super().check(**kwargs)
        for func, name, _description in self._get_base_actions():
            if not getattr(func, "allowed_permissions", None):
                errors.append(
                    checks.Error(
                        f"The action '{name}' of {type(self).__name__} declares no "
                        "permission; use @admin.action(permissions=[...]).",
                        obj=type(self),
                        id="meterops.E001",
                    )
                )
        return errors

    # --- how columns look (metering/admin/display.py), the same in every changelist ---------

    def get_list_display(self, request):
        return [display_column(self.model, name) for name in super().get_list_display(request)]

    def get_list_display_links(self, request, list_display):
        links = super().get_list_display_links(request, list_display)
        if links is None or links is list_display:
            return links
        return [display_column(self.model, name) for name in links]

    def get_sortable_by(self, request):
        if self.sortable_by is None:
            return super().get_sortable_by(request)
        return [_column_name(display_column(self.model, name)) for name in self.sortable_by]

    def changelist_view(self, request, extra_context=None):
        if request.method == "POST":
            offered = self.get_actions(request)
            if any(a not in offered for a in request.POST.getlist("action") if a):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)


class ReadOnlyModelAdmin(AuditedModelAdmin):
    """Rows written only by services (events, checks, provider answers): staff read them."""

    read_only = True


class AuditedHistoryAdmin(AuditedModelAdmin, SimpleHistoryAdmin):
    """The base of every history-tracked admin: the rules above, plus

    - every change to an existing record asks why (a required `change_reason`, kept in the
      history record) and records the acting user (SimpleHistoryAdmin.save_model);
    - reverting from the history page is a change: it needs the change permission on the
      object (django-simple-history saves a POSTed revert for anyone who may view history).
    """

    # The form for changing an existing record; by default the admin's form plus the reason.
    change_form_class: type[forms.ModelForm] | None = None

    def _reason_form(self) -> type[forms.ModelForm]:
        return self.change_form_class or change_reason_form(self.model, base=self.form)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is not None and self.has_change_permission(request, obj):
            kwargs["form"] = self._reason_form()
        form = super().get_form(request, obj, change=change, **kwargs)
        if getattr(request, "_history_version_read_only", False):
            # An old version shown to someone who may not revert it: every input disabled.
            return _disabled_form(form)
        return form

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if (
            obj is not None
            and self.has_change_permission(request, obj)
            and "change_reason" not in fields
        ):
            fields.append("change_reason")
        return fields

    object_history_form_template = "admin/history_version_form.html"

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        """An old version, labelled "Version of <date>"; read-only (no inputs, no revert
        button) unless the user may change the record and revert it."""
        record = get_object_or_404(
            self.model.history.model,
            **{self.model._meta.pk.attname: unquote(object_id)},
            history_id=version_id,
        )
        current = self.get_object(request, unquote(object_id))
        may_revert = (
            current is not None
            and self.has_change_permission(request, current)
            and not self.revert_disabled(request, current)
        )
        if not may_revert:
            request._history_version_read_only = True
        who = record.history_user or "the system"
        extra_context = {
            "title": f"Version of {display.utc_time(record.history_date, seconds=True)}",
            "version_read_only": not may_revert,
            "version_note": f"Saved by {who}"
            + (f": {record.history_change_reason}" if record.history_change_reason else "."),
            **(extra_context or {}),
        }
        if request.method == "POST":
            obj = self.get_object(request, unquote(object_id))
            if (
                obj is None
                or not self.has_change_permission(request, obj)
                or self.revert_disabled(request, obj)
            ):
                raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)

    def save_model(self, request, obj, form, change):
        reason = form.cleaned_data.get("change_reason") if change else None
        if reason:
            obj._change_reason = reason
        super().save_model(request, obj, form, change)


def _disabled_form(form_class: type[forms.BaseForm]) -> type[forms.BaseForm]:
    class DisabledForm(form_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for field in self.fields.values():
                field.disabled = True

    DisabledForm.__name__ = f"Disabled{form_class.__name__}"
    return DisabledForm


def change_reason_form(
    model_cls: type, base: type[forms.ModelForm] = forms.ModelForm
) -> type[forms.ModelForm]:
    """A ModelForm for `model_cls` with a required 'why' recorded in the history."""

    class ChangeReasonForm(base):
        change_reason = forms.CharField(
            label="Reason for this change",
            max_length=100,
            help_text="Recorded in the history with your name, for auditors.",
        )

        class Meta:
            model = model_cls
            # The admin narrows this to its own fieldsets.
            fields = "__all__"

    ChangeReasonForm.__name__ = f"{model_cls.__name__}ChangeForm"
    return ChangeReasonForm


# Field names whose values are machine identifiers (shortened, the whole value on hover).
_IDENTIFIER_SUFFIXES = ("_id", "identifier", "hash", "_key", "message_id", "event_id")
_NOT_IDENTIFIERS = {"external_id", "external_customer_id", "owner_key"}
_columns: dict[tuple[type, str], object] = {}


def _plain(value) -> str:
    return display.EMPTY if value is None else str(value)


def _column_name(column) -> str:
    return column if isinstance(column, str) else column.__name__


def display_column(model, name):
    """The list_display entry for a model field, as every changelist shows it.

    Times in UTC with the zone said, numbers right-aligned without trailing zeros, machine
    identifiers shortened with the whole value on hover; anything else (relations, choices,
    callables, other fields) unchanged. Sorting stays on the field.
    """
    if not isinstance(name, str):
        return name
    key = (model, name)
    if key in _columns:
        return _columns[key]
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        field = None
    column = name
    if (
        field is not None
        and field.many_to_one
        and field.related_model._meta.label == ("metering.Account")
    ):
        # The account's external id (what support searches by), not "Name (external id)";
        # plain text, so a link in the cell is the innermost element with it.
        def column(obj, _name=name):
            account = getattr(obj, _name)
            return display.EMPTY if account is None else account.external_id

        column.__name__ = f"acct_{name}"
        column.short_description = field.verbose_name
        column.admin_order_field = f"{name}__external_id"
    elif field is not None and not field.is_relation and not field.choices:
        render = prefix = None
        if isinstance(field, models.DateTimeField):
            render, prefix = display.utc_time, "time_"
        elif isinstance(
            field, models.DecimalField | models.IntegerField | models.FloatField
        ) and not isinstance(field, models.BooleanField):
            # Plain text (the cell's field-num_ class right-aligns it), so a link in the
            # cell is the innermost element with the number; ids without separators.
            render = display.decimal if not field.primary_key else _plain
            prefix = "num_"
        elif (
            isinstance(field, models.CharField)
            and name not in _NOT_IDENTIFIERS
            and (name.endswith(_IDENTIFIER_SUFFIXES) or name == "identifier")
        ):
            render, prefix = display.short_id, "id_"
        if render is not None:

            def column(obj, _name=name, _render=render):
                return _render(getattr(obj, _name))

            column.__name__ = f"{prefix}{name}"
            column.short_description = field.verbose_name
            column.admin_order_field = name
    _columns[key] = column
    return column


def pretty_json(value) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


def _copy_saved(saved, *, into) -> None:
    """Make the admin's unsaved instance the row a service saved (the admin logs and links it)."""
    for field in saved._meta.concrete_fields:
        setattr(into, field.attname, getattr(saved, field.attname))
    into._state.adding = False
    into._state.db = saved._state.db


class InputFilter(admin.SimpleListFilter):
    """A text box instead of a list of choices (too many accounts, users or reasons to list):
    subclasses set `title`, `parameter_name`, `placeholder` and `queryset`."""

    template = "admin/metering/input_filter.html"
    placeholder = ""

    def lookups(self, request, model_admin):
        return ()

    def has_output(self) -> bool:
        return True

    def __init__(self, request, params, model, model_admin):
        # The form re-submits every other parameter (filters, search, ordering), not the page.
        self.kept = [
            (key, value)
            for key, values in request.GET.lists()
            if key not in {self.parameter_name, "p", "e"}
            for value in values
        ]
        super().__init__(request, params, model, model_admin)

    def choices(self, changelist):
        yield {
            "parameter_name": self.parameter_name,
            "value": self.value() or "",
            "hidden": self.kept,
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
            "placeholder": self.placeholder,
        }

    def text(self) -> str:
        return (self.value() or "").strip()

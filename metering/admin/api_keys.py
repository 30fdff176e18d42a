"""API keys: created (the secret shown once) and revoked from the admin."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import reverse

from metering.admin.common import AuditedHistoryAdmin, _copy_saved
from metering.models import ApiKey
from metering.services.api_keys import api_key_create, api_key_revoke

# --- API keys --------------------------------------------------------------------------------


class ApiKeyCreateForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="ingest: send events; read: read usage; manage: create accounts and meters.",
    )

    class Meta:
        model = ApiKey
        fields = ("name", "scopes")


class ApiKeyFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedHistoryAdmin):
    """Keys are shown once, on creation, and never again; the hash is never shown at all."""

    list_display = ("name", "prefix_display", "scope_list", "state", "created_at", "last_used_at")
    list_select_related = ("created_by",)
    list_filter = (ApiKeyFilter,)
    search_fields = ("name", "=prefix")
    actions = ("revoke_selected",)
    # Everything but the label is fixed once the key exists.
    readonly_fields = (
        "prefix_display",
        "scope_list",
        "state",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    created_template = "admin/metering/apikey/created.html"

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "scopes")
        if self.has_change_permission(request, obj):
            return ("name", "change_reason", *self.readonly_fields)
        return ("name", *self.readonly_fields)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def has_delete_permission(self, request, obj=None):
        # Revoke instead: the key's history must survive for the audit.
        return False

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        key, raw_key = api_key_create(
            name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"], actor=request.user
        )
        _copy_saved(key, into=obj)
        # Handed to response_add on this request only: never stored, logged or put in a message.
        request._meterops_raw_api_key = raw_key

    def response_add(self, request, obj, post_url_continue=None):
        raw_key = getattr(request, "_meterops_raw_api_key", None)
        if raw_key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API key created",
            "key": obj,
            "raw_key": raw_key,
            "changelist_url": reverse("admin:metering_apikey_changelist"),
        }
        response = TemplateResponse(request, self.created_template, context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(permissions=["change"], description="Revoke selected API keys")
    def revoke_selected(self, request, queryset):
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(key=key, actor=request.user)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)

    @admin.display(description="Prefix")
    def prefix_display(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…"

    @admin.display(description="Scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes or [])

    @admin.display(description="State")
    def state(self, obj: ApiKey) -> str:
        return "active" if obj.is_active else "revoked"

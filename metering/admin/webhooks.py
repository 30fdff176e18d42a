"""Customer webhooks in the admin (the notifications app's models): endpoints (the secret never
shown), the outbox of deliveries with their attempts, and the attempt log.

They live here, not in notifications, because every admin in the project is built on the
audited bases in metering.admin.common and notifications sits below metering (it may not import
them); metering may name notifications.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.html import format_html

from metering.admin.common import AuditedHistoryAdmin, ReadOnlyModelAdmin
from notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from notifications.services import (
    webhook_delivery_resend,
    webhook_endpoint_delete,
    webhook_endpoint_upsert,
    webhook_endpoint_validate,
)


def _pretty_json_text(text: str) -> str:
    try:
        shown = json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        shown = text
    return format_html("<pre>{}</pre>", shown)


# --- endpoints -------------------------------------------------------------------------------


def _https_formfield(db_field, **kwargs):
    # A URL typed without a scheme means https (Django 6's default; silences its warning).
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


class WebhookEndpointChangeForm(forms.ModelForm):
    change_reason = forms.CharField(
        label="Reason for this change",
        max_length=100,
        help_text="Recorded in the history with your name, for auditors.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "event_types", "enabled")
        formfield_callback = _https_formfield

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            webhook_endpoint_validate(
                name=self.instance.name,
                url=cleaned.get("url", ""),
                event_types=cleaned.get("event_types"),
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, errors)
        return cleaned


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(AuditedHistoryAdmin):
    """Endpoints are created through the API (which shows the `whsec_` secret once); here staff
    change the URL, the event types and whether it is enabled, with a reason. The secret is
    never shown, not even to superusers."""

    list_display = ("owner_key", "name", "url", "event_type_list", "enabled", "failing_since")
    list_filter = ("enabled", "disabled_reason")
    search_fields = ("=owner_key", "name", "url")
    search_help_text = "Exact owner key (account:<id>), endpoint name or URL."
    ordering = ("owner_key", "name")
    change_form_class = WebhookEndpointChangeForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    state_fields = (
        "owner_key",
        "name",
        "secret_state",
        "failing_since",
        "disabled_reason",
        "disabled_at",
        "created_at",
        "updated_at",
    )

    def has_add_permission(self, request):
        return False

    def get_fields(self, request, obj=None):
        if obj is not None and self.has_change_permission(request, obj):
            return (
                *self.state_fields[:2],
                "url",
                "event_types",
                "enabled",
                "change_reason",
                *self.state_fields[2:],
            )
        return (*self.state_fields[:2], "url", "event_types", "enabled", *self.state_fields[2:])

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and self.has_change_permission(request, obj):
            return self.state_fields
        return (*self.state_fields, "url", "event_types", "enabled")

    def save_model(self, request, obj, form, change):
        # Through the service: re-enabling clears the failure state, disabling cancels what is
        # pending; the history records the user and the reason.
        webhook_endpoint_upsert(
            owner_key=obj.owner_key,
            name=obj.name,
            url=form.cleaned_data["url"],
            event_types=form.cleaned_data["event_types"],
            enabled=form.cleaned_data["enabled"],
            actor=request.user,
            reason=form.cleaned_data["change_reason"],
        )
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        webhook_endpoint_delete(endpoint=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for endpoint in queryset:
            webhook_endpoint_delete(endpoint=endpoint, actor=request.user)

    @admin.display(description="Event types")
    def event_type_list(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types or [])

    @admin.display(description="Secret")
    def secret_state(self, obj: WebhookEndpoint) -> str:
        if obj.previous_secret and obj.previous_secret_expires_at:
            return (
                "set (shown once, never again); rotated: the previous secret also signs until "
                f"{obj.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC"
            )
        return "set (shown once, never again)"


# --- deliveries and attempts -----------------------------------------------------------------


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = (
        "attempt_number",
        "started_at",
        "duration_ms",
        "outcome",
        "status_code",
        "retry_after_seconds",
        "response_excerpt",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyModelAdmin):
    """The outbox: one row per message and endpoint, with every attempt. Read-only; "Send
    again" re-queues a delivery with the same `webhook-id` on a fresh retry schedule."""

    list_display = (
        "message_id",
        "owner_key",
        "event_type",
        "status",
        "attempt_count",
        "last_status_code",
        "next_attempt_at",
    )
    list_select_related = ("endpoint",)
    list_filter = ("status", "event_type")
    search_fields = ("=message_id", "=owner_key", "=idempotency_key")
    search_help_text = "Exact webhook-id (msg_…), owner key or idempotency key."
    ordering = ("-id",)
    show_full_result_count = False
    actions = ("send_again",)
    inlines = (WebhookAttemptInline,)
    fields = (
        "message_id",
        "endpoint",
        "owner_key",
        "event_type",
        "idempotency_key",
        "status",
        "attempt_count",
        "schedule_step",
        "next_attempt_at",
        "claimed_until",
        "last_status_code",
        "delivered_at",
        "created_at",
        "body_pretty",
    )
    readonly_fields = fields

    def has_resend_permission(self, request) -> bool:
        return request.user.has_perm(self.action_permission("resend"))

    @admin.action(permissions=["resend"], description="Send again (same webhook-id)")
    def send_again(self, request, queryset):
        queued = skipped = 0
        for delivery in queryset:
            if webhook_delivery_resend(delivery=delivery, actor=request.user):
                queued += 1
                self.log_change(request, delivery, "Sent again")
            else:
                skipped += 1
        self.message_user(
            request, f"Queued {queued} delivery(ies) to send again.", messages.SUCCESS
        )
        if skipped:
            self.message_user(
                request,
                f"Skipped {skipped}: endpoint disabled (enable it first) or an attempt in flight.",
                messages.WARNING,
            )

    @admin.display(description="Endpoint")
    def endpoint_name(self, obj: WebhookDelivery) -> str:
        return obj.endpoint.name

    @admin.display(description="Body")
    def body_pretty(self, obj: WebhookDelivery) -> str:
        return _pretty_json_text(obj.body)


@admin.register(WebhookAttempt)
class WebhookAttemptAdmin(ReadOnlyModelAdmin):
    list_display = (
        "delivery",
        "attempt_number",
        "started_at",
        "duration_ms",
        "outcome",
        "status_code",
    )
    list_select_related = ("delivery",)
    list_filter = ("outcome",)
    search_fields = ("=delivery__message_id",)
    ordering = ("-id",)
    show_full_result_count = False
    readonly_fields = (
        "delivery",
        "attempt_number",
        "started_at",
        "duration_ms",
        "outcome",
        "status_code",
        "retry_after_seconds",
        "response_excerpt",
    )
    fields = readonly_fields

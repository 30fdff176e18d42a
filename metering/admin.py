"""The metering back office: accounts, meters, API keys, usage events and the quarantine.

Every action declares the permission it needs, and a POSTed action the user may not run is a 403
(Django's default quietly re-renders the list). Every change to an audited record asks why; the
reason lands in the django-simple-history record next to the acting user.
"""

from __future__ import annotations

import json
from datetime import timedelta
from math import ceil

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode
from simple_history.admin import SimpleHistoryAdmin

from metering.models import Account, ApiKey, Meter, QuarantinedEvent, RollupCheck, UsageEvent
from metering.services.accounts import account_upsert, meter_upsert
from metering.services.api_keys import api_key_create, api_key_revoke
from metering.services.quarantine import quarantine_replay

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


# --- accounts and meters ---------------------------------------------------------------------


@admin.register(Account)
class AccountAdmin(AuditedAdminMixin, SimpleHistoryAdmin):
    list_display = (
        "external_id",
        "name",
        "tier",
        "status",
        "timezone",
        "currency",
        "provider_customer_id",
        "created_at",
        "events_link",
    )
    list_display_links = ("external_id", "name")
    list_filter = ("status", "tier", "timezone", "currency")
    search_fields = ("external_id", "name", "provider_customer_id")
    readonly_fields = ("created_at", "updated_at", "events_link", "quarantine_link")
    change_form_class = change_reason_form(Account)
    list_per_page = 50

    def get_readonly_fields(self, request, obj=None):
        # The external id is the key product backends use; changing it would orphan their events.
        if obj is not None:
            return ("external_id", *self.readonly_fields)
        return self.readonly_fields

    def get_urls(self):
        # The account usage page (metering.admin_dashboard), before the catch-all object URLs.
        from metering.admin_dashboard import account_usage_urls

        return account_usage_urls(self) + super().get_urls()

    @admin.display(description="Events")
    def events_link(self, obj: Account) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:metering_usageevent_changelist")
        return format_html(
            '<a href="{}?{}">events</a>', url, urlencode({"account__id__exact": obj.pk})
        )

    @admin.display(description="Quarantined events")
    def quarantine_link(self, obj: Account) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:metering_quarantinedevent_changelist")
        query = urlencode({"external_customer_id__exact": obj.external_id})
        return format_html('<a href="{}?{}">quarantined events</a>', url, query)

    def save_model(self, request, obj, form, change):
        # Through the service, as the API does: creating an account replays its quarantined
        # events, and a new time zone rebuilds its daily rollups.
        reason = form.cleaned_data.get("change_reason", "") if change else ""
        account, _created = account_upsert(
            external_id=obj.external_id,
            name=obj.name,
            timezone=obj.timezone,
            currency=obj.currency,
            tier=obj.tier,
            metadata=obj.metadata,
            actor=request.user,
            reason=reason,
        )
        # Status and provider id are staff-only fields, outside the API's representation.
        _save_extra(account, obj, ("status", "provider_customer_id"), request.user, reason)
        _copy_saved(account, into=obj)


@admin.register(Meter)
class MeterAdmin(AuditedAdminMixin, SimpleHistoryAdmin):
    list_display = ("code", "name", "aggregation", "value_property", "dims", "unit", "active")
    list_filter = ("aggregation", "active")
    search_fields = ("code", "name")
    readonly_fields = ("created_at", "updated_at")
    change_form_class = change_reason_form(Meter)

    @admin.display(description="Dimensions")
    def dims(self, obj: Meter) -> str:
        return ", ".join(obj.dimensions or []) or "-"

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return self.readonly_fields
        # Events refer to meters by code; renaming it would break every client.
        fixed = ["code"]
        # Stored values were computed for the aggregation and property; they stay as they are
        # once there are events (metering.services.accounts.meter_upsert enforces it too).
        if UsageEvent.objects.filter(meter=obj).exists():
            fixed += ["aggregation", "value_property"]
        return (*fixed, *self.readonly_fields)

    def save_model(self, request, obj, form, change):
        # Through the service, as the API does: creating a meter replays its quarantined events.
        reason = form.cleaned_data.get("change_reason", "") if change else ""
        meter, _created = meter_upsert(
            code=obj.code,
            name=obj.name,
            aggregation=obj.aggregation,
            value_property=obj.value_property,
            dimensions=obj.dimensions,
            unit=obj.unit,
            actor=request.user,
            reason=reason,
        )
        _save_extra(meter, obj, ("active",), request.user, reason)
        _copy_saved(meter, into=obj)


def _save_extra(saved, edited, fields: tuple[str, ...], actor, reason: str) -> None:
    """Apply the admin-only `fields` of `edited` to the row a service just saved."""
    changed = [f for f in fields if getattr(edited, f) != getattr(saved, f)]
    if not changed:
        return
    for f in changed:
        setattr(saved, f, getattr(edited, f))
    saved._history_user = actor
    if reason:
        saved._change_reason = reason
    saved.save(update_fields=[*changed, "updated_at"])


def _copy_saved(saved, *, into) -> None:
    """Make the admin's unsaved instance the row a service saved (the admin logs and links it)."""
    for field in saved._meta.concrete_fields:
        setattr(into, field.attname, getattr(saved, field.attname))
    into._state.adding = False
    into._state.db = saved._state.db


# --- usage events: append-only, tens of millions of rows -------------------------------------


class EstimatedCountPaginator(Paginator):
    """A paginator that never counts a huge table.

    It counts at most `exact_up_to` + 1 rows (a LIMITed subquery, cheap with any filter); past
    that it takes the planner's row estimate, which costs one EXPLAIN and no table scan, and
    offers at most `max_estimated_pages` pages, since a deep OFFSET would read every row it
    skips. Past those, staff narrow the list with a filter.
    """

    exact_up_to = 10_000
    max_estimated_pages = 200
    is_estimate = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list.order_by()
        bounded = queryset[: self.exact_up_to + 1].count()
        self.is_estimate = bounded > self.exact_up_to
        if not self.is_estimate:
            return bounded
        sql, params = queryset.values("pk").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        return max(int(plan[0]["Plan"]["Plan Rows"]), bounded)

    @cached_property
    def num_pages(self) -> int:
        if self.count == 0 and not self.allow_empty_first_page:
            return 0
        pages = ceil(max(1, self.count - self.orphans) / self.per_page)
        return min(pages, self.max_estimated_pages) if self.is_estimate else pages


class SortableByOnlyChangeList(ChangeList):
    """Honours `sortable_by` for hand-written `?o=` URLs too, not only in the column headers."""

    def get_ordering_field(self, field_name):
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)


class AccountExternalIdFilter(admin.SimpleListFilter):
    """A text box, not a list: there can be far too many accounts to list them."""

    title = "account (external id)"
    parameter_name = "account_external_id"
    template = "admin/metering/input_filter.html"

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
        }

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        if value:
            return queryset.filter(account__external_id=value)
        return queryset


class OccurredRecentlyFilter(admin.SimpleListFilter):
    """Cheap date ranges on the occurred_at index (a date hierarchy would scan for its dates)."""

    title = "occurred"
    parameter_name = "occurred"
    ranges = {"1d": ("Last 24 hours", 1), "7d": ("Last 7 days", 7), "30d": ("Last 30 days", 30)}

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _days) in self.ranges.items()]

    def queryset(self, request, queryset):
        if self.value() in self.ranges:
            days = self.ranges[self.value()][1]
            return queryset.filter(occurred_at__gte=timezone.now() - timedelta(days=days))
        return queryset


@admin.register(UsageEvent)
class UsageEventAdmin(AuditedAdminMixin, ReadOnlyModelAdmin):
    """Read-only, for everyone: events are append-only (the database refuses UPDATE/DELETE too)."""

    list_display = (
        "id",
        "transaction_id",
        "account",
        "meter",
        "occurred_at",
        "value",
        "unique_value",
        "kind",
        "is_late",
        "received_at",
    )
    list_select_related = ("account", "meter")
    list_filter = (AccountExternalIdFilter, "meter", OccurredRecentlyFilter, "kind", "is_late")
    # Newest first by occurrence: the time index, or (account, meter, time) when both are
    # filtered, yields rows in this order. Sorting by anything else would sort the whole table.
    sortable_by = ("id", "occurred_at")
    ordering = ("-occurred_at",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    # Facet counts would run a COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100
    search_fields = ("=transaction_id",)
    search_help_text = "Exact transaction id, within one account (filter by account first)."
    raw_id_fields = ("account", "meter", "corrects")
    fields = (
        "account",
        "meter",
        "transaction_id",
        "source",
        "occurred_at",
        "received_at",
        "is_late",
        "value",
        "unique_value",
        "properties_pretty",
        "kind",
        "corrects",
        "content_hash_hex",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("account", "meter")

    def get_changelist(self, request, **kwargs):
        return SortableByOnlyChangeList

    def get_search_results(self, request, queryset, search_term):
        # Transaction ids are unique per account and indexed only behind the account, so a
        # search without an account would scan the whole table.
        if not search_term:
            return queryset, False
        if not (
            request.GET.get(AccountExternalIdFilter.parameter_name)
            or request.GET.get("account__id__exact")
        ):
            self.message_user(
                request,
                "Filter by an account first: transaction ids are searched within one account.",
                messages.WARNING,
            )
            return queryset.none(), False
        return queryset.filter(transaction_id=search_term.strip()), False

    @admin.display(description="Properties")
    def properties_pretty(self, obj: UsageEvent) -> str:
        return pretty_json(obj.properties)

    @admin.display(description="Content hash")
    def content_hash_hex(self, obj: UsageEvent) -> str:
        return bytes(obj.content_hash).hex() if obj.content_hash is not None else "-"


# --- quarantine ------------------------------------------------------------------------------


@admin.register(QuarantinedEvent)
class QuarantinedEventAdmin(AuditedAdminMixin, SimpleHistoryAdmin):
    list_display = (
        "transaction_id",
        "external_customer_id",
        "meter_code",
        "reason",
        "status",
        "occurred_at",
        "received_at",
        "replay_result",
        "replayed_at",
    )
    list_filter = ("status", "reason")
    search_fields = ("=external_customer_id", "=meter_code", "=transaction_id")
    search_help_text = "Exact account external id, meter code or transaction id."
    # Newest first by id: received_at has no index here.
    ordering = ("-id",)
    actions = ("replay_selected",)
    # An unprovisioned account can fill the quarantine fast; don't count it on every page.
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    fields = (
        "external_customer_id",
        "meter_code",
        "transaction_id",
        "source",
        "occurred_at",
        "received_at",
        "reason",
        "status",
        "replay_result",
        "replayed_at",
        "event",
        "properties_pretty",
        "payload_pretty",
    )
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # Nothing is edited by hand: an event is replayed as received, or stays here.
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_replay_permission(self, request) -> bool:
        return request.user.has_perm("metering.replay_quarantinedevent")

    @admin.action(permissions=["replay"], description="Replay selected quarantined events")
    def replay_selected(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        outcome = quarantine_replay(ids=ids, actor=request.user)
        parts = [
            f"{outcome.get('replayed', 0)} stored ({outcome.get('accepted', 0)} new, "
            f"{outcome.get('duplicate', 0)} already stored)"
        ]
        labels = {
            "conflict": "conflicts",
            "rejected": "rejected",
            "pending": "still waiting for their account or meter",
            "already_replayed": "replayed before",
        }
        parts += [f"{outcome[key]} {label}" for key, label in labels.items() if outcome.get(key)]
        failed = outcome.get("conflict", 0) + outcome.get("rejected", 0)
        self.message_user(
            request,
            f"Replayed {len(ids)} selected event(s): {', '.join(parts)}.",
            messages.WARNING if failed or outcome.get("pending") else messages.SUCCESS,
        )

    @admin.display(description="Properties")
    def properties_pretty(self, obj: QuarantinedEvent) -> str:
        return pretty_json(obj.properties)

    @admin.display(description="Payload as received")
    def payload_pretty(self, obj: QuarantinedEvent) -> str:
        return pretty_json(obj.payload)


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
class ApiKeyAdmin(AuditedAdminMixin, SimpleHistoryAdmin):
    """Keys are shown once, on creation, and never again; the hash is never shown at all."""

    list_display = (
        "name",
        "prefix_display",
        "scope_list",
        "state",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_select_related = ("created_by",)
    list_filter = (ApiKeyFilter,)
    search_fields = ("name", "=prefix")
    actions = ("revoke_selected",)
    change_form_class = change_reason_form(ApiKey)
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


# --- rollup self-checks ----------------------------------------------------------------------


@admin.register(RollupCheck)
class RollupCheckAdmin(ReadOnlyModelAdmin):
    """What the nightly self-check compared, what drifted and what it repaired. Read-only:
    rows are written by the self-check service only."""

    list_display = (
        "started_at",
        "finished_at",
        "status",
        "since",
        "until",
        "buckets_checked",
        "drifted",
        "repaired",
    )
    list_filter = ("status",)
    date_hierarchy = None
    readonly_fields = (*list_display, "details_pretty")
    exclude = ("details",)

    @admin.display(description="Drifted buckets (sample)")
    def details_pretty(self, obj: RollupCheck) -> str:
        return pretty_json(obj.details) if obj.details else "-"

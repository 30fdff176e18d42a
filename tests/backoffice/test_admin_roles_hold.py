"""Roles hold, whatever is posted.

Walks EVERY model registered in the admin (so a new admin is covered the day it appears) and,
for each staff role (Auditor, Support, Manager and a staff user in no group), tries the
changelist, the add, change and delete forms, the list's inline editing (where the admin has
it), the history revert form and every action the admin has (taken from a superuser's request, so actions hidden from the role are posted too),
with crafted POSTs. Where the role lacks the model's permission (or the action's declared
permission), the answer must be a 403, no task may be sent, and a fingerprint of every row of
every table (history and admin log included; sessions aside) must not move.

One database is seeded for the module (the demo commands plus one generic row for any
registered model still empty); each attempt runs in a savepoint that is rolled back.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
from collections.abc import Iterator

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection, models, transaction
from django.forms import CheckboxInput, MultiWidget
from django.test import Client, RequestFactory
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

ROLES = ("Auditor", "Support", "Manager", "no group")
# Tables whose rows change on any request (sessions) or never hold business data.
UNFINGERPRINTED = {"django_session", "django_migrations"}


class _Rollback(Exception):
    """Raised to roll back one attempt's savepoint."""


# --- seeding -----------------------------------------------------------------------------------


def _generic_value(field: models.Field, depth: int):
    if field.choices:
        return field.choices[0][0]
    if field.name.endswith("currency"):
        return "USD"  # money code refuses what is not ISO 4217
    if isinstance(field, models.ForeignKey | models.OneToOneField):
        related = field.related_model
        existing = related._default_manager.order_by("pk").first()
        return existing if existing is not None else _generic_row(related, depth + 1)
    if isinstance(field, models.DateTimeField):
        return timezone.now()
    if isinstance(field, models.DateField):
        return timezone.now().date()
    if isinstance(field, models.TimeField):
        return dt.time(12, 0)
    if isinstance(field, models.DurationField):
        return dt.timedelta(seconds=1)
    if isinstance(field, models.BooleanField):
        return False
    if isinstance(field, models.DecimalField):
        return decimal.Decimal("1")
    if isinstance(field, models.IntegerField | models.FloatField):
        return 1
    if isinstance(field, models.JSONField):
        return {}
    if isinstance(field, models.UUIDField):
        import uuid

        return uuid.uuid4()
    if isinstance(field, models.BinaryField):
        return b"walker"
    return "walker"[: field.max_length or 6]


def _generic_row(model: type[models.Model], depth: int = 0) -> models.Model:
    """One row built from the fields alone (for a registered model nothing else seeds)."""
    assert depth < 4, f"cannot build a {model._meta.label} row generically"
    values = {}
    for field in model._meta.concrete_fields:
        if field.primary_key or field.has_default() or field.null:
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            continue
        values[field.name] = _generic_value(field, depth)
    return model._default_manager.create(**values)


def _seed() -> None:
    call_command("demo", accounts=2, days=3, force=True, verbosity=0)
    call_command("demo_billing", force=True, verbosity=0)
    call_command("push_usage", verbosity=0)
    call_command("pull_provider", verbosity=0)
    # A user no test acts as, for the user admin's forms.
    get_user_model().objects.create_user(username="walker-target", password="x-irrelevant-9")
    for model in admin.site._registry:
        if not model._default_manager.exists():
            _generic_row(model)


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker) -> Iterator[list]:
    """The module's data, in a transaction rolled back when the module is done, and the walk's
    plan: for each registered admin, its changelist URL and every write attempt (the forms are
    read once, as a superuser, for every role)."""
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            _seed()
            superuser = get_user_model().objects.filter(is_superuser=True).first()
            super_client = Client()
            super_client.force_login(superuser)
            yield [
                (
                    model,
                    reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"),
                    list(_attempts(model, model_admin, superuser, super_client)),
                )
                for model, model_admin in admin.site._registry.items()
            ]
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


# --- the fingerprint ---------------------------------------------------------------------------


@functools.cache
def _fingerprint_sql() -> tuple[list[str], str]:
    with connection.cursor() as cursor:
        names = connection.introspection.table_names(cursor)
    tables = sorted(n for n in names if n not in UNFINGERPRINTED)
    # Per table: the row count and an order-free sum of 64-bit row hashes (no sort needed).
    parts = ", ".join(
        f"(SELECT count(*) || ':' || coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) "
        f"FROM {connection.ops.quote_name(name)} t)"
        for name in tables
    )
    return tables, f"SELECT ARRAY[{parts}]"


def fingerprint() -> dict[str, str]:
    """A hash of every row of every table, by table, in one query."""
    tables, sql = _fingerprint_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql)
        hashes = cursor.fetchone()[0]
    return dict(zip(tables, hashes, strict=True))


def _moved(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(t for t in before if before[t] != after.get(t))


# --- crafted POST data -------------------------------------------------------------------------


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat() if not isinstance(value, dt.datetime) else str(value)
    return str(value)


def _add_form(data: dict, form) -> None:
    for name, field in form.fields.items():
        bound = form[name]
        value = bound.value()
        key = bound.html_name
        widget = field.widget
        if isinstance(widget, MultiWidget):
            parts = widget.decompress(value) if not isinstance(value, list) else value
            for index, part in enumerate(parts):
                data[f"{key}_{index}"] = _text(part)
        elif isinstance(widget, CheckboxInput):
            if value:
                data[key] = "on"
        elif isinstance(value, list | tuple):
            data[key] = [_text(v) for v in value]
        else:
            data[key] = _text(value)


def form_post_data(response) -> dict:
    """What a browser would post back from an admin form page (a valid form, most often)."""
    data: dict = {}
    context = response.context
    if context is None or "adminform" not in context:
        return data
    _add_form(data, context["adminform"].form)
    for inline in context.get("inline_admin_formsets", []):
        formset = inline.formset
        _add_form(data, formset.management_form)
        for form in formset.forms:
            _add_form(data, form)
    data["change_reason"] = "walker"
    data["_save"] = "Save"
    return data


# --- the walk ----------------------------------------------------------------------------------


def _url(name: str, *args) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


def _history_version(model, obj):
    history = getattr(model, "history", None)
    if history is None or not hasattr(history, "model"):
        return None
    return history.model.objects.filter(**{model._meta.pk.attname: obj.pk}).order_by("pk").first()


def _superuser_request(superuser):
    request = RequestFactory().get("/admin/")
    request.user = superuser
    return request


def _may(user, model, permission: str) -> bool:
    opts = model._meta
    return user.has_perm(f"{opts.app_label}.{permission}_{opts.model_name}")


def _target(model):
    if model is get_user_model():
        return model._default_manager.get(username="walker-target")
    return model._default_manager.order_by("pk").first()


def _attempts(model, model_admin, superuser, super_client: Client) -> Iterator[tuple]:
    """(label, permissions needed, method, url, data) for every write route of the admin."""
    opts = model._meta
    base = f"admin:{opts.app_label}_{opts.model_name}"
    obj = _target(model)
    changelist = reverse(f"{base}_changelist")

    add = _url(f"{base}_add")
    if add:
        page = super_client.get(add)
        yield "add", ("add",), add, form_post_data(page) if page.status_code == 200 else {}

    if obj is not None:
        change = _url(f"{base}_change", obj.pk)
        if change:
            page = super_client.get(change)
            yield "change", ("change",), change, form_post_data(page)
        delete = _url(f"{base}_delete", obj.pk)
        if delete:
            yield "delete", ("delete",), delete, {"post": "yes"}
        version = _history_version(model, obj)
        revert = version and _url(f"{base}_simple_history", obj.pk, version.pk)
        if revert:
            page = super_client.get(revert)
            yield "history revert", ("change",), revert, form_post_data(page)

        if model_admin.list_editable:
            page = super_client.get(changelist)
            data = {"_save": "Save"}
            formset = page.context["cl"].formset
            _add_form(data, formset.management_form)
            for form in formset.forms:
                _add_form(data, form)
            yield "list edit", ("change",), changelist, data

        actions = model_admin.get_actions(_superuser_request(superuser))
        for name, (func, _name, _description) in actions.items():
            needed = tuple(getattr(func, "allowed_permissions", ()))
            data = {
                "action": name,
                "_selected_action": [str(obj.pk)],
                "index": "0",
                "select_across": "0",
                "post": "yes",
            }
            yield f"action {name}", needed, changelist, data


@pytest.fixture
def sent_tasks(monkeypatch) -> list:
    """Every Celery task sent during the test (none leaves the process)."""
    from celery import Celery
    from celery.app.task import Task

    sent: list = []

    def record_apply_async(self, *args, **kwargs):
        sent.append(self.name)

    def record_send_task(self, name, *args, **kwargs):
        sent.append(name)

    monkeypatch.setattr(Task, "apply_async", record_apply_async)
    monkeypatch.setattr(Celery, "send_task", record_send_task)
    return sent


def _role_user(role: str):
    User = get_user_model()
    if role == "no group":
        return User.objects.create_user(
            username="walker-nogroup", password="x-irrelevant-9", is_staff=True
        )
    user = User.objects.create_user(
        username=f"walker-{role.lower()}", password="x-irrelevant-9", is_staff=True
    )
    user.groups.add(Group.objects.get(name=role))
    return User.objects.get(pk=user.pk)  # fresh permission cache


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_a_role_writes_nothing_it_has_no_right_to_whatever_it_posts(seeded, role, sent_tasks):
    user = _role_user(role)
    client = Client()
    client.force_login(user)

    failures: list[str] = []
    checked = 0
    for model, changelist, attempts in seeded:
        label = model._meta.label
        may_view = _may(user, model, "view") or _may(user, model, "change")
        status = client.get(changelist).status_code
        if status != (200 if may_view else 403):
            failures.append(f"{label} changelist: {status} (may view: {may_view})")

        for what, needed, url, data in attempts:
            if not needed:
                failures.append(f"{label} {what}: declares no permission")
                needed = ("change",)  # and posted as if it needed the change permission
            if all(_may(user, model, p) for p in needed):
                continue  # the role may do this; not this test's question
            checked += 1
            before = fingerprint()
            del sent_tasks[:]
            try:
                with transaction.atomic():
                    response = client.post(url, data)
                    after = fingerprint()
                    raise _Rollback
            except _Rollback:
                pass
            moved = _moved(before, after)
            if response.status_code != 403 or moved or sent_tasks:
                failures.append(
                    f"{label} {what}: {response.status_code}, tables changed {moved}, "
                    f"tasks sent {sent_tasks}"
                )

    assert checked > 0
    assert not failures, "\n".join(failures)


@pytest.mark.django_db
def test_every_registered_model_has_a_row_to_act_on(seeded):
    empty = [m._meta.label for m in admin.site._registry if not m._default_manager.exists()]
    assert empty == []


def test_the_fingerprint_moves_when_a_row_changes(seeded, db):
    from metering.models import Account

    before = fingerprint()
    Account.objects.filter(pk=Account.objects.order_by("pk").first().pk).update(name="moved")
    assert _moved(before, fingerprint()) == ["metering_account"]

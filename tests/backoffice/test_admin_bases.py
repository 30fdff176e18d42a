"""The one audited admin base, and the third-party admins re-registered on it."""

from __future__ import annotations

from decimal import Decimal

import pytest
from celery.app.task import Task
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from billing.models import ProviderMeter, SimulatedFaultConfig
from metering.admin import AuditedHistoryAdmin, AuditedModelAdmin
from tests.metering.factories import MeterFactory

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def staff(django_user_model):
    def make(role: str | None, **extra):
        user = django_user_model.objects.create_user(
            username=f"u-{role or 'none'}", password="x-irrelevant-9", is_staff=True, **extra
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


def _fault_form(config: SimulatedFaultConfig, **changes) -> dict:
    data = {
        "name": config.name,
        "seed": config.seed,
        "drop_rate": config.drop_rate,
        "duplicate_rate": config.duplicate_rate,
        "delay_rate": config.delay_rate,
        "delay_seconds": config.delay_seconds,
        "skew_rate": config.skew_rate,
        "skew_seconds": config.skew_seconds,
        "active": "on" if config.active else "",
    }
    data.update(changes)
    return data


def _changed_fault_config() -> tuple[SimulatedFaultConfig, int]:
    """A config whose first history version had a 0.1 drop rate; it is 0.5 now."""
    config = SimulatedFaultConfig.objects.create(name="faults", drop_rate=Decimal("0.1"))
    first = config.history.earliest().history_id
    config.drop_rate = Decimal("0.5")
    config.save()
    return config, first


@pytest.mark.parametrize("role", ["Auditor", "Support", "Manager"])
def test_a_role_cannot_revert_the_fault_config_from_its_history_page(staff, role):
    config, first = _changed_fault_config()
    url = reverse("admin:billing_simulatedfaultconfig_simple_history", args=[config.pk, first])
    client = _client(staff(role))

    assert client.get(url).status_code == 200
    response = client.post(url, _fault_form(config, drop_rate="0.1", change_reason="revert"))

    assert response.status_code == 403
    config.refresh_from_db()
    assert config.drop_rate == Decimal("0.5")
    assert config.history.count() == 2


def test_an_auditor_cannot_revert_a_provider_meter_from_its_history_page(staff):
    meter = MeterFactory(code="api_calls")
    pm = ProviderMeter.objects.create(
        provider="simulated",
        meter=meter,
        provider_meter_id="pm_1",
        event_name="a",
        aggregation="sum",
    )
    first = pm.history.earliest().history_id
    ProviderMeter.objects.filter(pk=pm.pk).update(event_name="b")
    url = reverse("admin:billing_providermeter_simple_history", args=[pm.pk, first])

    response = _client(staff("Auditor")).post(
        url,
        {
            "provider": "simulated",
            "meter": meter.pk,
            "provider_meter_id": "pm_1",
            "event_name": "a",
            "aggregation": "sum",
        },
    )

    assert response.status_code == 403
    pm.refresh_from_db()
    assert pm.event_name == "b"
    assert pm.history.count() == 1


def test_a_superuser_reverts_the_fault_config_only_with_a_reason_and_is_recorded(admin_user):
    config, first = _changed_fault_config()
    url = reverse("admin:billing_simulatedfaultconfig_simple_history", args=[config.pk, first])
    client = _client(admin_user)

    without_reason = client.post(url, _fault_form(config, drop_rate="0.1"))
    assert without_reason.status_code == 200  # the form again, with the reason required
    config.refresh_from_db()
    assert config.drop_rate == Decimal("0.5")

    with_reason = client.post(url, _fault_form(config, drop_rate="0.1", change_reason="undo"))
    assert with_reason.status_code == 302
    config.refresh_from_db()
    assert config.drop_rate == Decimal("0.1")
    latest = config.history.latest()
    assert (latest.history_user, latest.history_change_reason) == (admin_user, "undo")


def _periodic_task() -> PeriodicTask:
    crontab = CrontabSchedule.objects.create(minute="7")
    return PeriodicTask.objects.create(
        name="walker rollup", task="metering.tasks.rollup", crontab=crontab, enabled=True
    )


@pytest.mark.parametrize("role", ["Auditor", "Support", "Manager"])
@pytest.mark.parametrize("action", ["disable_tasks", "toggle_tasks", "run_tasks"])
def test_a_role_cannot_disable_toggle_or_run_periodic_tasks(staff, role, action, monkeypatch):
    task = _periodic_task()
    sent = []
    monkeypatch.setattr(Task, "apply_async", lambda self, *a, **k: sent.append(self.name))
    client = _client(staff(role))
    changelist = reverse("admin:django_celery_beat_periodictask_changelist")

    assert client.get(changelist).status_code == 200
    response = client.post(
        changelist, {"action": action, "_selected_action": [task.pk], "index": 0}
    )

    assert response.status_code == 403
    task.refresh_from_db()
    assert task.enabled is True
    assert sent == []


def test_the_periodic_task_actions_need_the_change_permission(staff, monkeypatch):
    from django.contrib.auth.models import Permission

    task = _periodic_task()
    user = staff(None)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_periodictask", "change_periodictask"])
    )
    response = _client(user).post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": "disable_tasks", "_selected_action": [task.pk], "index": 0},
    )

    assert response.status_code == 302
    task.refresh_from_db()
    assert task.enabled is False


def test_every_admin_is_on_the_audited_base_and_history_tracked_ones_on_the_history_base():
    registered = admin.site._registry
    not_audited = [
        m._meta.label for m, a in registered.items() if not isinstance(a, AuditedModelAdmin)
    ]
    tracked = {m for m in registered if hasattr(m, "history")}
    not_history = [
        m._meta.label for m in tracked if not isinstance(registered[m], AuditedHistoryAdmin)
    ]
    assert not_audited == []
    assert not_history == []
    assert {"billing.SimulatedFaultConfig", "billing.ProviderMeter"} <= {
        m._meta.label for m in tracked
    }


def test_an_auditor_reads_who_holds_which_role_but_changes_nothing(staff):
    auditor = staff("Auditor")
    support = staff("Support")
    client = _client(auditor)

    users = client.get(reverse("admin:auth_user_changelist"))
    assert users.status_code == 200
    assert b"u-Support" in users.content and b"Support" in users.content
    groups = client.get(reverse("admin:auth_group_changelist"))
    assert groups.status_code == 200 and b"Manager" in groups.content

    page = client.get(reverse("admin:auth_user_change", args=[support.pk]))
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert support.password.encode() not in page.content
    assert b"pbkdf2" not in page.content

    posted = client.post(
        reverse("admin:auth_user_change", args=[support.pk]),
        {"username": "u-Support", "is_superuser": "on", "is_staff": "on"},
    )
    assert posted.status_code == 403
    support.refresh_from_db()
    assert support.is_superuser is False


def test_only_a_superuser_changes_users_and_groups_even_with_the_permissions(staff):
    from django.contrib.auth.models import Permission

    user = staff(None)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="auth", codename__contains="_")
    )
    client = _client(user)

    assert client.get(reverse("admin:auth_user_add")).status_code == 403
    response = client.post(
        reverse("admin:auth_user_change", args=[user.pk]),
        {"username": user.username, "is_superuser": "on", "is_staff": "on"},
    )
    assert response.status_code == 403
    user.refresh_from_db()
    assert user.is_superuser is False
    group = Group.objects.get(name="Manager")
    assert (
        client.post(
            reverse("admin:auth_group_delete", args=[group.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    assert Group.objects.filter(pk=group.pk).exists()


def test_the_auditor_group_may_view_users_and_groups_and_nothing_more():
    auditor = Group.objects.get(name="Auditor")
    codenames = set(auditor.permissions.values_list("codename", flat=True))
    assert {"view_user", "view_group"} <= codenames
    # Reads only: views, and the audit log's export (a read of a date range).
    assert all(c.startswith("view_") or c == "export_auditentry" for c in codenames)
    assert not get_user_model().objects.filter(is_superuser=True, groups=auditor).exists()


def test_an_action_without_declared_permissions_fails_the_system_check():
    from django.contrib.admin import AdminSite

    from billing.models import WebhookEvent
    from metering.admin import ReadOnlyModelAdmin

    def forget(modeladmin, request, queryset):
        pass

    class CarelessAdmin(ReadOnlyModelAdmin):
        actions = (forget,)

    errors = CarelessAdmin(WebhookEvent, AdminSite()).check()

    assert [e.id for e in errors] == ["meterops.E001"]
    assert "forget" in errors[0].msg

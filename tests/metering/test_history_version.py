"""An old version on the history page is labelled with its date and does not look editable
for anyone who may not revert it."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from metering.models import Meter
from tests.metering.factories import MeterFactory

pytestmark = pytest.mark.django_db


def _client(django_user_model, group: str | None, superuser: bool = False) -> Client:
    user = django_user_model.objects.create_user(
        username=f"u-{group}-{superuser}", password="x-9-long-pw", is_staff=True
    )
    user.is_superuser = superuser
    user.save()
    if group:
        user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return client


def _old_version_url(meter: Meter) -> str:
    meter.name = "Renamed"
    meter._change_reason = "ticket 42"
    meter.save()
    first = meter.history.order_by("history_id").first()
    return reverse("admin:metering_meter_simple_history", args=[meter.pk, first.history_id])


def test_auditor_sees_a_dated_read_only_version(django_user_model):
    meter = MeterFactory(code="api_calls", name="API calls")
    url = _old_version_url(meter)
    client = _client(django_user_model, "Auditor")

    response = client.get(url)

    assert response.status_code == 200
    html = response.content.decode()
    assert "<strong>Version of 20" in html and " UTC</strong>" in html
    assert "shown read-only" in html
    # Every input disabled; no revert button.
    form = html.split('id="content-main"')[1].split("</form>")[0]
    inputs = re.findall(r"<(?:input|select|textarea)\b[^>]*>", form)
    fields = [i for i in inputs if 'type="hidden"' not in i]
    assert any('name="name"' in i and 'value="API calls"' in i for i in fields)
    assert fields and all(" disabled" in i for i in fields), fields
    assert 'name="_save"' not in html and "Revert" not in html.split('id="content"')[1]


def test_a_user_who_may_change_still_gets_the_revert_form(django_user_model):
    meter = MeterFactory(code="api_calls", name="API calls")
    url = _old_version_url(meter)
    client = _client(django_user_model, None, superuser=True)

    html = client.get(url).content.decode()

    assert "<strong>Version of 20" in html
    assert 'name="name"' in html and 'name="_save"' in html
    assert "shown read-only" not in html

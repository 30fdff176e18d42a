"""Who on the CS team hears of an alert: the account's CS owner, else the team's address; and the
team's Slack-compatible webhook, from the rule or from NOTIFY_TEAM_WEBHOOK_URL."""

from __future__ import annotations

import json

import pytest
from django.core import mail

from alerts.models import Alert, AlertNotification
from alerts.services import alerts_evaluate_all
from tests.alerts.factories import default_rule
from tests.alerts.series import ONE_DAY, TODAY, account, api_meter, at, usage
from tests.notifications.receiver import Answer, WebhookReceiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def slack():
    with WebhookReceiver() as running:
        yield running


@pytest.fixture(autouse=True)
def _team(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.NOTIFY_TEAM_EMAIL = "cs-team@example.com"
    settings.NOTIFY_TEAM_WEBHOOK_URL = ""


def _spike(metadata=None) -> None:
    """A 12x day on a steady account: the default spike rule opens a critical alert."""
    acct, meter = account(metadata=metadata or {}), api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 12_000)


def test_an_alert_emails_the_accounts_cs_owner(django_capture_on_commit_callbacks):
    _spike({"cs_owner_email": "dana@example.com"})

    with django_capture_on_commit_callbacks(execute=True):
        alerts_evaluate_all(at=at(TODAY, 20))

    (message,) = mail.outbox
    assert message.to == ["dana@example.com"]
    assert "Usage spike" in message.subject
    assert Alert.objects.get().message in message.body
    assert AlertNotification.objects.get().handed_over is True


def test_an_alert_on_an_account_without_a_cs_owner_emails_the_team_address(
    django_capture_on_commit_callbacks,
):
    _spike()

    with django_capture_on_commit_callbacks(execute=True):
        alerts_evaluate_all(at=at(TODAY, 20))

    (message,) = mail.outbox
    assert message.to == ["cs-team@example.com"]


def test_the_rules_own_addresses_come_before_the_cs_owner(django_capture_on_commit_callbacks):
    rule = default_rule("spike")
    rule.email_to = "oncall@example.com, billing@example.com"
    rule.save()
    _spike({"cs_owner_email": "dana@example.com"})

    with django_capture_on_commit_callbacks(execute=True):
        alerts_evaluate_all(at=at(TODAY, 20))

    (message,) = mail.outbox
    assert message.to == ["oncall@example.com", "billing@example.com"]


def test_without_any_address_nobody_is_emailed(settings, django_capture_on_commit_callbacks):
    settings.NOTIFY_TEAM_EMAIL = ""
    _spike()

    with django_capture_on_commit_callbacks(execute=True):
        alerts_evaluate_all(at=at(TODAY, 20))

    assert mail.outbox == []
    assert not AlertNotification.objects.exists()


def test_the_team_webhook_from_the_environment_gets_slack_json(
    settings, slack, django_capture_on_commit_callbacks
):
    settings.NOTIFY_TEAM_WEBHOOK_URL = slack.url
    _spike({"cs_owner_email": "dana@example.com"})

    with django_capture_on_commit_callbacks(execute=True):
        alerts_evaluate_all(at=at(TODAY, 20))

    (request,) = slack.requests
    body = json.loads(request.body)
    assert list(body) == ["text"]
    assert "Usage spike" in body["text"] and Alert.objects.get().message in body["text"]
    assert request.headers["content-type"].startswith("application/json")
    channels = set(AlertNotification.objects.values_list("channel", "handed_over"))
    assert channels == {("email", True), ("team_webhook", True)}


def test_a_rules_team_webhook_replaces_the_one_from_the_environment(
    settings, slack, django_capture_on_commit_callbacks
):
    settings.NOTIFY_TEAM_WEBHOOK_URL = "http://127.0.0.1:9/never"
    rule = default_rule("spike")
    rule.team_webhook_url = slack.url
    rule.save()
    _spike()

    with django_capture_on_commit_callbacks(execute=True):
        alerts_evaluate_all(at=at(TODAY, 20))

    assert len(slack.requests) == 1
    row = AlertNotification.objects.get(channel="team_webhook")
    assert row.recipient == slack.url


def test_a_team_webhook_that_fails_does_not_fail_the_evaluation(
    settings, slack, django_capture_on_commit_callbacks
):
    settings.NOTIFY_TEAM_WEBHOOK_URL = slack.url
    slack.answer(Answer(status=500, body=b"slack is down"))
    _spike()

    with django_capture_on_commit_callbacks(execute=True):
        run = alerts_evaluate_all(at=at(TODAY, 20))

    assert len(run.opened) == 1
    assert len(slack.requests) == 1
    assert AlertNotification.objects.get(channel="team_webhook").handed_over is False
    # The e-mail, handed over on its own, still went.
    assert [m.to for m in mail.outbox] == [["cs-team@example.com"]]

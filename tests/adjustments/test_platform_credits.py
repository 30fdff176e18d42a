"""Adjustments reaching Lago and Metronome (the suite's fake servers, driven by the official
SDKs): an approved credit is granted once at the platform (Lago: granted wallet credits, found
again by our key in their metadata since Lago has no idempotency key; Metronome: a credit
grant under our key as its uniqueness_key), across a lost answer and a crash between the
platform's answer and our commit, and the platform's next invoice is lowered by it."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from adjustments.models import Adjustment
from adjustments.services import (
    Actor,
    adjustment_apply,
    adjustment_approve,
    adjustment_idempotency_key,
    adjustment_request,
)
from billing.providers import get_provider
from tests.adjustments.support import role_user, scenario
from tests.adjustments.test_stripe import _CRASH

S = Adjustment.Status
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def support(django_user_model):
    return Actor(user=role_user(django_user_model, "Support", "sue"))


@pytest.fixture
def manager(django_user_model):
    return Actor(user=role_user(django_user_model, "Manager", "max"))


def _lago_credits(fake, account) -> list[tuple[str, Decimal]]:
    return [(g["lago_id"], Decimal(g["credit_amount"])) for g in fake.granted(account.external_id)]


def _metronome_credits(fake, account) -> list[tuple[str, int]]:
    return [(g["id"], g["grant_amount"]["amount"]) for g in fake.grants_of(account.external_id)]


def _approved(support, manager, amount_minor: int = 150_00):
    """A credit above Support's limit (100 USD), approved by a Manager, not applied yet."""
    s = scenario(per_day=500)
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="credit",
        amount_minor=amount_minor,
        reason_code="outage_sla",
        note="Outage on the 3rd",
        ticket="ZD-13",
        actor=support,
    )
    assert adjustment.status == S.REQUESTED
    adjustment = adjustment_approve(adjustment=adjustment, actor=manager, apply=False)
    assert adjustment.status == S.APPROVED
    return s, adjustment


@pytest.mark.django_db
def test_a_credit_within_policy_is_granted_lago_wallet_credits_once(lago_fake, support):
    s = scenario(per_day=300)
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="credit",
        amount_minor=25_00,
        reason_code="goodwill",
        note="Sorry",
        actor=support,
    )

    assert adjustment.status == S.APPLIED, adjustment.provider_error
    assert (adjustment.provider, adjustment.provider_route) == ("lago", "wallet_grant")
    assert _lago_credits(lago_fake, s.account) == [
        (adjustment.provider_credit_id, Decimal("25.00"))
    ]
    (grant,) = lago_fake.granted(s.account.external_id)
    pairs = {m["key"]: m["value"] for m in grant["metadata"]}
    assert pairs["meterops_credit"] == adjustment_idempotency_key(adjustment)
    assert pairs["meterops_adjustment"] == f"adj-{adjustment.pk}"
    # Lago's next invoice is lowered by exactly the credit (after tax, from the wallet).
    invoice = lago_fake.create_invoice(
        external_customer_id=s.account.external_id, lines=[("x", 1, 100_00)], currency="USD"
    )
    assert (invoice["prepaid_credit_amount_cents"], invoice["total_amount_cents"]) == (
        25_00,
        75_00,
    )


@pytest.mark.django_db
def test_a_credit_within_policy_is_one_metronome_credit_grant(metronome_fake, support):
    s = scenario(per_day=300)
    get_provider().ensure_customer(external_id=s.account.external_id, name=s.account.name)
    metronome_fake.create_invoice(
        alias=s.account.external_id, lines=[("Storage", 300, 300_00)], status="DRAFT"
    )
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="credit",
        amount_minor=25_00,
        reason_code="goodwill",
        note="Sorry",
        actor=support,
    )

    assert adjustment.status == S.APPLIED, adjustment.provider_error
    assert (adjustment.provider, adjustment.provider_route) == ("metronome", "credit_grant")
    assert _metronome_credits(metronome_fake, s.account) == [(adjustment.provider_credit_id, 2500)]
    (grant,) = metronome_fake.grants_of(s.account.external_id)
    assert grant["uniqueness_key"] == adjustment_idempotency_key(adjustment)
    preview = get_provider().upcoming_invoice(customer_id=s.account.external_id)
    assert preview.total_minor == 300_00 - 25_00


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("platform", "path"),
    [("lago", "/api/v1/wallet_transactions"), ("metronome", "/v1/credits/createGrant")],
)
def test_a_lost_answer_fails_the_credit_and_its_retry_finds_the_first(
    request, platform, path, support, manager
):
    fake = request.getfixturevalue(f"{platform}_fake")
    s, adjustment = _approved(support, manager)
    fake.lose_next(path)  # the platform grants the credit; its answer is lost

    failed = adjustment_apply(
        adjustment=adjustment,
        actor=manager,
        provider=get_provider(max_retries=0, sleep=lambda s: None),
    )
    assert failed.status == S.FAILED and failed.provider_credit_id == ""
    retried = adjustment_apply(adjustment=failed, actor=manager)

    assert retried.status == S.APPLIED, retried.provider_error
    if platform == "lago":
        credits = _lago_credits(fake, s.account)
        assert credits == [(retried.provider_credit_id, Decimal("150.00"))]
    else:
        credits = _metronome_credits(fake, s.account)
        assert credits == [(retried.provider_credit_id, 150_00)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("platform", ["lago", "metronome"])
def test_a_crash_after_the_platform_answered_and_before_we_committed_credits_once(
    request, platform, support, manager
):
    fake = request.getfixturevalue(f"{platform}_fake")
    s, adjustment = _approved(support, manager)
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "BILLING_PROVIDER": platform,
    }
    if platform == "lago":
        env.update(LAGO_API_KEY=fake.api_key, LAGO_API_URL=fake.url)
    else:
        env.update(METRONOME_API_KEY=fake.api_key, METRONOME_API_BASE=fake.url)
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASH, str(adjustment.pk), str(manager.user.pk)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert crashed.returncode == 17, crashed.stderr.decode()[-2000:]
    credits = _lago_credits if platform == "lago" else _metronome_credits
    assert len(credits(fake, s.account)) == 1
    adjustment.refresh_from_db()
    assert adjustment.status == S.APPROVED and adjustment.provider_credit_id == ""

    rerun = adjustment_apply(adjustment=adjustment, actor=manager)

    assert rerun.status == S.APPLIED, rerun.provider_error
    ((credit_id, _amount),) = credits(fake, s.account)
    assert rerun.provider_credit_id == credit_id

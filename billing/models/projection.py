"""Daily snapshots of a period's projected invoice."""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from billing.models.subscriptions import BillingPeriod
from metering.models import CURRENCY_VALIDATOR


class ProjectionSnapshot(models.Model):
    """The projected invoice of an account's open period as it stood on one local day.

    Taken daily so the admin can show how the projection moved over the period. One row per
    (account, period, local day): taking it again the same day updates that row.
    """

    account = models.ForeignKey(
        "metering.Account", on_delete=models.CASCADE, related_name="projection_snapshots"
    )
    period = models.ForeignKey(
        BillingPeriod, on_delete=models.CASCADE, related_name="projection_snapshots"
    )
    taken_on = models.DateField(help_text="The local day (account's zone) this snapshot is for.")
    currency = models.CharField(max_length=3, validators=[CURRENCY_VALIDATOR])
    to_date_total_minor = models.BigIntegerField(help_text="Total of usage so far, minor units.")
    projected_total_minor = models.BigIntegerField(
        help_text="Total forecast at period end, minor units."
    )
    # One entry per line (kind, meter, units to date, forecast units, amounts) with decimals as
    # strings and amounts as integer minor units.
    lines = models.JSONField(default=list, blank=True, encoder=DjangoJSONEncoder)
    computed_at = models.DateTimeField(help_text="When this row was last computed (UTC).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["account", "period", "taken_on"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "period", "taken_on"], name="projection_snapshot_one_per_day"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account_id} {self.taken_on:%Y-%m-%d}: {self.projected_total_minor}"

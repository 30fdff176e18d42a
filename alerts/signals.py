"""Signals alerts sends for the apps above it.

`billing_hold_released` is sent when a Manager releases a billing hold, once the release has
committed (so a receiver never sees a release that rolled back). The adjustments app listens to
it to open a credit request when the mode is "push and open a credit"; alerts itself builds no
credit.
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent by alerts.services.billing_hold_release, after the release committed, with:
#   sender: alerts.models.BillingHold (the class)
#   hold:   the released BillingHold (status "released", released_at, released_by,
#           release_mode and release_reason set; hold.account is loaded; hold.opened_at is
#           when the held usage started)
#   mode:   "push" (push everything held) or "push_and_credit" (push, and open a credit for
#           the held usage); a BillingHold.ReleaseMode value
#   actor:  the user who released it (a Manager: alerts.release_billinghold)
#   reason: the reason they gave (non-empty text)
#   credit_amount_minor: with "push_and_credit", the credit's amount in integer minor units
#           of the account's currency (> 0); None otherwise
# Receivers should be idempotent by hold.pk: a release is sent once, but a receiver that
# crashes is not retried by the signal.
billing_hold_released = Signal()

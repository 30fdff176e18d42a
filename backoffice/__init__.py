"""Pages and rules that span apps: the account hub, staff roles, the status endpoint.

It sits above every other app (imports flow one way), so it may read metering, billing,
alerts, reconciliation and adjustments; none of them may import it.
"""

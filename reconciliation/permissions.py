"""The permissions the Manager role needs for the reconciliation queue ("app_label.codename").

backoffice's roles (above this app) add these to the Manager; Support and Auditor only view
(every reconciliation model's view permission, as for every app). Re-pushing also needs the
push ledger's billing.change_pushledgerentry, which the Manager already has.
"""

MANAGER_PERMISSIONS: tuple[str, ...] = (
    "reconciliation.acknowledge_mismatch",
    "reconciliation.resolve_mismatch",
    "reconciliation.repush_mismatch",
    "reconciliation.add_reconciliationthreshold",
    "reconciliation.change_reconciliationthreshold",
)

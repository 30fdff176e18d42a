"""The push reads metering's rolled-up feed instead of its own inbox.

Until now every event insert also wrote a billing_pushinbox row (a second statement trigger on
the event table), next to metering's rollup inbox row. Now ingestion writes the rollup inbox
only; the rollup drain appends what it folds in to metering_rolledupevent, and the push claims
from there (billing.services.push.enqueue). Here, in one transaction: the trigger goes, the
events waiting in the push inbox that are already rolled up move to the feed (those still in
the rollup inbox reach it when drained), and the push inbox is dropped.

An event already pushed but still in the rollup inbox at this moment reaches the feed once more
when drained; enqueueing it again adds nothing (event entries are unique by identifier, ON
CONFLICT DO NOTHING, and an unchanged period-to-date value makes no new entry).
"""

from django.db import migrations

FORWARD = """
DROP TRIGGER IF EXISTS billing_usageevent_push_inbox ON metering_usageevent;
DROP FUNCTION IF EXISTS billing_usageevent_to_push_inbox();

INSERT INTO metering_rolledupevent (account_id, event_id)
SELECT e.account_id, p.event_id
FROM billing_pushinbox p
JOIN metering_usageevent e ON e.id = p.event_id
WHERE NOT EXISTS (SELECT 1 FROM metering_rollupinbox i WHERE i.event_id = p.event_id)
ON CONFLICT DO NOTHING;
"""

# Back to a push inbox filled by its own trigger: it holds what the push has not taken yet,
# the feed's rows and the events not rolled up yet.
BACKWARD = """
CREATE OR REPLACE FUNCTION billing_usageevent_to_push_inbox() RETURNS trigger AS $$
BEGIN
    INSERT INTO billing_pushinbox (event_id) SELECT id FROM new_events;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_usageevent_push_inbox
AFTER INSERT ON metering_usageevent
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION billing_usageevent_to_push_inbox();

INSERT INTO billing_pushinbox (event_id)
SELECT event_id FROM metering_rolledupevent
UNION
SELECT event_id FROM metering_rollupinbox
ON CONFLICT DO NOTHING;
DELETE FROM metering_rolledupevent;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_push_ledger_changes"),
        ("metering", "0009_rolled_up_feed"),
    ]

    operations = [
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.DeleteModel(name="PushInbox"),
    ]

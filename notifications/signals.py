"""The one signal notifications sends, so the apps above can react (tell the CS team, mark the
customer's account) without notifications naming them. Sent once the disabling has committed."""

from django.dispatch import Signal

# Sent with endpoint=<WebhookEndpoint> and reason=<WebhookEndpoint.DisabledReason value>.
webhook_endpoint_disabled = Signal()

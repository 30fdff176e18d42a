from django.urls import path

from alerts.api import views, webhook_endpoints

urlpatterns = [
    path("alerts", views.AlertListView.as_view(), name="alert-list"),
    path(
        "accounts/<str:external_id>/webhook-endpoints",
        webhook_endpoints.WebhookEndpointListView.as_view(),
        name="webhook-endpoint-list",
    ),
    path(
        "accounts/<str:external_id>/webhook-endpoints/<str:name>",
        webhook_endpoints.WebhookEndpointDetailView.as_view(),
        name="webhook-endpoint-detail",
    ),
    path(
        "accounts/<str:external_id>/webhook-endpoints/<str:name>/rotate-secret",
        webhook_endpoints.WebhookEndpointRotateSecretView.as_view(),
        name="webhook-endpoint-rotate-secret",
    ),
]

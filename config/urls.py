from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from backoffice.views import status_view
from billing.webhooks import stripe_webhook
from metering.api.views import healthz

admin.site.site_header = "Meterops"
admin.site.site_title = "Meterops"
admin.site.index_title = "Back office"
# The admin's "View site" link: there is no public site, so it opens the API docs.
admin.site.site_url = "/api/docs/"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("status", status_view, name="status"),
    path("admin/", admin.site.urls),
    path("webhooks/stripe", stripe_webhook, name="stripe-webhook"),
    path("api/v1/", include("metering.api.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("api/v1/", include("reconciliation.api.urls")),
    path("api/v1/", include("alerts.api.urls")),
    path("api/v1/", include("adjustments.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]

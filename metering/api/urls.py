from django.urls import path

from metering.api import views
from metering.api.usage import AccountUsageView

urlpatterns = [
    path("events", views.EventIngestView.as_view(), name="events"),
    path("events/batch", views.EventBatchView.as_view(), name="events-batch"),
    path("accounts/<str:external_id>", views.AccountDetailView.as_view(), name="account-detail"),
    path("accounts/<str:external_id>/usage", AccountUsageView.as_view(), name="account-usage"),
    path("meters", views.MeterListView.as_view(), name="meter-list"),
    path("meters/<str:code>", views.MeterDetailView.as_view(), name="meter-detail"),
]

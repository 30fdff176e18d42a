from django.urls import path

from adjustments.api.views import AccountAdjustmentsView

urlpatterns = [
    path(
        "accounts/<str:external_id>/adjustments",
        AccountAdjustmentsView.as_view(),
        name="account-adjustments",
    ),
]

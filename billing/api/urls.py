from django.urls import path

from billing.api import views

urlpatterns = [
    path(
        "accounts/<str:external_id>/projected-invoice",
        views.ProjectedInvoiceView.as_view(),
        name="account-projected-invoice",
    ),
]

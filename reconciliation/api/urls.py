from django.urls import path

from reconciliation.api.views import MismatchListView

urlpatterns = [
    path("reconciliation/mismatches", MismatchListView.as_view(), name="reconciliation-mismatches"),
]

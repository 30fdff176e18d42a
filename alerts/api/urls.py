from django.urls import path

from alerts.api import views

urlpatterns = [
    path("alerts", views.AlertListView.as_view(), name="alert-list"),
]

from django.urls import path

from pricing import api

urlpatterns = [
    path("cost-rates", api.CostRatesView.as_view(), name="cost-rates"),
    path("margins", api.MarginsView.as_view(), name="margins"),
    path("simulations", api.SimulationsView.as_view(), name="simulations"),
]

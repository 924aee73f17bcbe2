from django.urls import path

from billing import api

urlpatterns = [
    path("customers", api.CustomersView.as_view(), name="customers"),
    path("customers/<str:external_id>", api.CustomerDetailView.as_view(), name="customer"),
    path("plans", api.PlansView.as_view(), name="plans"),
    path("subscriptions", api.SubscriptionsView.as_view(), name="subscriptions"),
    path("invoices", api.InvoicesView.as_view(), name="invoices"),
    path("invoices/<int:invoice_id>", api.InvoiceDetailView.as_view(), name="invoice"),
    path(
        "invoices/<int:invoice_id>/finalize",
        api.InvoiceFinalizeView.as_view(),
        name="invoice-finalize",
    ),
    path("invoices/<int:invoice_id>/void", api.InvoiceVoidView.as_view(), name="invoice-void"),
]

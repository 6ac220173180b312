"""URLs for tests that open admin pages: ``override_settings(ROOT_URLCONF="tests.urls")``."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]

"""URLs: login/logout, "me", the people directory, the admin, and photos (to signed-in users)."""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import path
from django.views.generic import RedirectView
from django.views.static import serve

from example_site.people import views

admin.site.site_header = "Example Corp administration"
admin.site.site_title = "Example Corp admin"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="me", permanent=False)),
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="people/login.html",
            extra_context={"login_hint": settings.LOGIN_HINT},
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("me/", views.me, name="me"),
    path("people/", views.people, name="people"),
    path("admin/", admin.site.urls),
    # Photos are personal data: only signed-in users get them. A production site would let
    # its web server serve MEDIA_ROOT behind the same rule (e.g. X-Accel-Redirect).
    path(
        f"{settings.MEDIA_URL.strip('/')}/<path:path>",
        login_required(serve),
        {"document_root": settings.MEDIA_ROOT},
    ),
]

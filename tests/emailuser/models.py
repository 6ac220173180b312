"""``AUTH_USER_MODEL = "emailuser.EmailUser"``: the shape of Django's documented custom user
example (``USERNAME_FIELD = "email"``), with one name field of its own."""

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models


class EmailUserManager(BaseUserManager):
    """``create_user(email, password)`` and ``create_superuser(email, password)``."""

    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **fields):
        user = self.model(email=self.normalize_email(email), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields):
        return self.create_user(email, password, is_superuser=True, **fields)


class EmailUser(AbstractBaseUser, PermissionsMixin):
    """Logs in with its e-mail address; ``display_name`` instead of first and last names."""

    email = models.EmailField(unique=True, max_length=254)
    display_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)

    objects = EmailUserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self) -> str:
        return self.email

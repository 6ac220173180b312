"""A test app whose ``EmailUser`` is an ``AbstractBaseUser`` + ``PermissionsMixin`` identified
by its e-mail address, without username, first_name or last_name: installed only by
:mod:`tests.settings_email_user`."""

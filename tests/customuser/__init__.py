"""A test app whose ``Person`` is an ``AbstractUser`` under another class name, with an extra
field filled from the directory: installed only by :mod:`tests.settings_person`."""

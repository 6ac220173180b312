import cProfile, pstats, time
import pytest
from django.test import override_settings
from adldap_auth.backends import ADLDAPBackend
from tests.test_backend_samba import settings_for

pytestmark = [pytest.mark.django_db]

def test_prof(samba_dc):
    with override_settings(**settings_for(samba_dc)):
        b = ADLDAPBackend()
        b.populate_user("bulk0000")
        t = time.monotonic()
        pr = cProfile.Profile(); pr.enable()
        for i in range(1, 51):
            b.populate_user(f"bulk{i:04d}")
        pr.disable()
        print("per user", (time.monotonic() - t) / 50)
        pstats.Stats(pr).sort_stats("cumulative").print_stats(30)

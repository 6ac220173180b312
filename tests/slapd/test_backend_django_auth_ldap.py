"""ADLDAPBackend configured only by AUTH_LDAP_* settings is django-auth-ldap's LDAPBackend.

Each behaviour that django-auth-ldap documents (authentication by DN template and by search,
the attribute map, ALWAYS_UPDATE_USER, NO_NEW_USERS, group types, REQUIRE_GROUP, DENY_GROUP,
group queries, USER_FLAGS_BY_GROUP, MIRROR_GROUPS(_EXCEPT), FIND_GROUP_PERMS,
AUTHORIZE_ALL_USERS, CACHE_TIMEOUT, BIND_AS_AUTHENTICATING_USER, PERMIT_EMPTY_PASSWORD,
START_TLS and connection options, the populate_user and ldap_error signals, the populate_user()
API, USER_QUERY_FIELD, LDAPSearchUnion, subclass hooks, default_settings, settings_prefix) is
run against the OpenLDAP lab with both classes, expecting the same, documented, result. No
LDAP_SYNC_* setting is set in this module.
"""

from __future__ import annotations

import copy
import pickle

import ldap
import pytest
from django.contrib.auth import authenticate, get_backends, get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.utils.module_loading import import_string
from django_auth_ldap.backend import LDAPBackend, ldap_error, populate_user
from django_auth_ldap.config import (
    GroupOfNamesType,
    LDAPGroupQuery,
    LDAPSearch,
    LDAPSearchUnion,
    NestedGroupOfNamesType,
)

from adldap_auth.backends import ADLDAPBackend
from adldap_auth.conf import sync_settings
from adldap_auth.models import DirectoryUser
from tests.backend_helpers import BindSpy, dead_uri
from tests.helpers import SearchSpy
from tests.lab import ldif
from tests.lab.spec import LAB_PASSWORD

pytestmark = pytest.mark.django_db

User = get_user_model()

CLASSES = {
    "django-auth-ldap": "django_auth_ldap.backend.LDAPBackend",
    "adldap-auth": "adldap_auth.backends.ADLDAPBackend",
}
ENGINEERING_TEMPLATE = f"uid=%(user)s,ou=Engineering,{ldif.PEOPLE_DN}"  # alice and bob live here


def group(name: str) -> str:
    return f"cn={name},{ldif.GROUPS_DN}"


@pytest.fixture(params=list(CLASSES), ids=list(CLASSES))
def backend_path(request, settings):
    settings.AUTHENTICATION_BACKENDS = [CLASSES[request.param]]
    cache.clear()
    yield CLASSES[request.param]
    cache.clear()


@pytest.fixture
def auth_ldap(settings, slapd_lab, backend_path):
    """Set AUTH_LDAP_* settings: the server and reader account, then what the test passes."""
    assert not sync_settings.configured()

    def configure(**values):
        settings.AUTH_LDAP_SERVER_URI = slapd_lab.uri
        settings.AUTH_LDAP_BIND_DN = ldif.READER_DN
        settings.AUTH_LDAP_BIND_PASSWORD = ldif.READER_PASSWORD
        for name, value in values.items():
            setattr(settings, f"AUTH_LDAP_{name}", value)
        return get_backends()[0]

    return configure


def search(filterstr: str = "(uid=%(user)s)") -> LDAPSearch:
    return LDAPSearch(ldif.PEOPLE_DN, ldap.SCOPE_SUBTREE, filterstr)


def group_search() -> LDAPSearch:
    return LDAPSearch(ldif.GROUPS_DN, ldap.SCOPE_SUBTREE, "(objectClass=groupOfNames)")


# -- authentication ------------------------------------------------------------------------


def test_the_class_is_what_the_settings_name(auth_ldap, backend_path):
    backend = auth_ldap()
    assert type(backend) is import_string(backend_path)
    assert isinstance(backend, LDAPBackend)


def test_simple_bind_with_dn_template_creates_the_user(auth_ldap):
    auth_ldap(USER_DN_TEMPLATE=ENGINEERING_TEMPLATE)
    user = authenticate(username="alice", password=LAB_PASSWORD)
    assert user.username == "alice"
    assert user.has_usable_password() is False
    assert user.ldap_user.dn == f"uid=alice,ou=Engineering,{ldif.PEOPLE_DN}"
    assert User.objects.count() == 1
    assert not DirectoryUser.objects.exists()  # no adldap-auth write without LDAP_SYNC_*


def test_new_user_is_lower_case_and_stripped(auth_ldap):
    auth_ldap(USER_DN_TEMPLATE=ENGINEERING_TEMPLATE)
    assert authenticate(username="Alice", password=LAB_PASSWORD).username == "alice"
    assert authenticate(username=" alice ", password=LAB_PASSWORD).username == "alice"
    assert User.objects.count() == 1


def test_dn_template_escapes_the_name(auth_ldap):
    auth_ldap(USER_DN_TEMPLATE=ENGINEERING_TEMPLATE)
    with BindSpy().active() as binds:
        assert authenticate(username="alice,ou=x", password=LAB_PASSWORD) is None
    assert f"uid=alice\\,ou\\=x,ou=Engineering,{ldif.PEOPLE_DN}" in binds.who


def test_wrong_password_and_unknown_user(auth_ldap):
    auth_ldap(USER_SEARCH=search())
    assert authenticate(username="alice", password="bogus") is None
    assert authenticate(username="nobody", password=LAB_PASSWORD) is None
    assert not User.objects.exists()


def test_search_bind_finds_the_dn(auth_ldap):
    auth_ldap(USER_SEARCH=search())
    user = authenticate(username="jdoe", password=LAB_PASSWORD)
    assert user.ldap_user.dn == f"uid=jdoe,ou=it,{ldif.PEOPLE_DN}".lower()
    assert user.ldap_user.attrs["cn"] == ["Doe, John (IT)"]


def test_search_escapes_the_name(auth_ldap):
    auth_ldap(USER_SEARCH=search())
    with SearchSpy().active() as spy:
        assert authenticate(username="alice*", password=LAB_PASSWORD) is None
    assert spy.calls[0][:2] == (ldif.PEOPLE_DN, "(uid=alice\\2a)")


def test_search_with_several_results_fails(auth_ldap):
    auth_ldap(USER_SEARCH=search("(objectClass=inetOrgPerson)"))
    assert authenticate(username="alice", password=LAB_PASSWORD) is None


def test_search_union(auth_ldap):
    auth_ldap(
        USER_SEARCH=LDAPSearchUnion(
            LDAPSearch(f"ou=Sales,{ldif.PEOPLE_DN}", ldap.SCOPE_SUBTREE, "(uid=%(user)s)"),
            LDAPSearch(f"ou=IT,{ldif.PEOPLE_DN}", ldap.SCOPE_SUBTREE, "(uid=%(user)s)"),
        )
    )
    assert authenticate(username="carol", password=LAB_PASSWORD) is not None  # Sales
    assert authenticate(username="erin", password=LAB_PASSWORD) is not None  # IT
    assert authenticate(username="alice", password=LAB_PASSWORD) is None  # Engineering


def test_empty_password_is_refused_without_a_bind(auth_ldap):
    auth_ldap(USER_SEARCH=search())
    with BindSpy().active() as binds:
        assert authenticate(username="alice", password="") is None
    assert binds.who == []


def test_start_tls_and_connection_options(auth_ldap, slapd_lab):
    auth_ldap(
        USER_SEARCH=search(),
        START_TLS=True,
        CONNECTION_OPTIONS={
            ldap.OPT_X_TLS_CACERTFILE: slapd_lab.ca_file,
            ldap.OPT_X_TLS_REQUIRE_CERT: ldap.OPT_X_TLS_DEMAND,
            ldap.OPT_X_TLS_NEWCTX: 0,
        },
    )
    user = authenticate(username="alice", password=LAB_PASSWORD)
    assert user.ldap_user.connection.get_option(ldap.OPT_X_TLS_REQUIRE_CERT) == (
        ldap.OPT_X_TLS_DEMAND
    )


def test_bind_as_authenticating_user(auth_ldap):
    auth_ldap(
        USER_DN_TEMPLATE=ENGINEERING_TEMPLATE,
        BIND_DN="",
        BIND_PASSWORD="",
        BIND_AS_AUTHENTICATING_USER=True,
    )
    user = authenticate(username="alice", password=LAB_PASSWORD)
    assert user.ldap_user.connection.whoami_s().lower() == (
        f"dn:uid=alice,ou=engineering,{ldif.PEOPLE_DN}".lower()
    )


def test_server_down_returns_none_and_sends_ldap_error(auth_ldap):
    auth_ldap(USER_SEARCH=search(), SERVER_URI=dead_uri())
    seen = []

    def receiver(sender, context, user, request, exception, **kwargs):
        seen.append((context, type(exception)))

    ldap_error.connect(receiver)
    try:
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
    finally:
        ldap_error.disconnect(receiver)
    assert seen == [("search_for_user_dn", ldap.SERVER_DOWN)]


# -- populating users ------------------------------------------------------------------------


def test_user_attr_map(auth_ldap):
    auth_ldap(
        USER_SEARCH=search(),
        USER_ATTR_MAP={"first_name": "givenName", "last_name": "sn", "email": "mail"},
    )
    user = authenticate(username="carol", password=LAB_PASSWORD)
    assert (user.first_name, user.last_name, user.email) == ("Carol", "Cruz", "carol@example.test")


@pytest.mark.parametrize("always", [True, False])
def test_always_update_user(auth_ldap, always):
    auth_ldap(
        USER_SEARCH=search(), USER_ATTR_MAP={"first_name": "givenName"}, ALWAYS_UPDATE_USER=always
    )
    user = authenticate(username="carol", password=LAB_PASSWORD)
    User.objects.filter(pk=user.pk).update(first_name="Changed in Django")
    user = authenticate(username="carol", password=LAB_PASSWORD)
    assert user.first_name == ("Carol" if always else "Changed in Django")


def test_no_new_users(auth_ldap):
    auth_ldap(USER_SEARCH=search(), NO_NEW_USERS=True)
    assert authenticate(username="alice", password=LAB_PASSWORD) is None
    User.objects.create(username="alice")
    assert authenticate(username="alice", password=LAB_PASSWORD) is not None
    assert User.objects.count() == 1


def test_existing_user_is_found_case_insensitively(auth_ldap):
    auth_ldap(USER_SEARCH=search())
    existing = User.objects.create(username="alice")
    assert authenticate(username="ALICE", password=LAB_PASSWORD) == existing


def test_user_query_field(auth_ldap):
    auth_ldap(USER_SEARCH=search(), USER_ATTR_MAP={"email": "mail"}, USER_QUERY_FIELD="email")
    existing = User.objects.create(username="alice.local", email="alice@example.test")
    user = authenticate(username="alice", password=LAB_PASSWORD)
    assert user.pk == existing.pk and user.username == "alice.local"


def test_populate_user_signal(auth_ldap):
    auth_ldap(USER_SEARCH=search())
    calls = []

    def receiver(sender, user, ldap_user, **kwargs):
        calls.append(sender)
        user.last_name = ldap_user.attrs["sn"][0].upper()

    populate_user.connect(receiver)
    try:
        user = authenticate(username="bob", password=LAB_PASSWORD)
    finally:
        populate_user.disconnect(receiver)
    assert calls == [type(get_backends()[0])]
    assert User.objects.get(pk=user.pk).last_name == "BAKER"


def test_populate_user_api(auth_ldap):
    backend = auth_ldap(USER_SEARCH=search(), USER_ATTR_MAP={"first_name": "givenName"})
    user = backend.populate_user("erin")
    assert user.username == "erin" and user.first_name == "Erin"
    assert user.has_usable_password() is False
    assert backend.populate_user("nobody") is None


# -- groups ----------------------------------------------------------------------------------


def test_require_group(auth_ldap):
    auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=GroupOfNamesType(),
        REQUIRE_GROUP=group("Rocket Team"),
    )
    assert authenticate(username="alice", password=LAB_PASSWORD) is not None
    assert authenticate(username="bob", password=LAB_PASSWORD) is None
    assert list(User.objects.values_list("username", flat=True)) == ["alice"]


def test_deny_group(auth_ldap):
    auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=GroupOfNamesType(),
        DENY_GROUP=group("Sales"),
    )
    assert authenticate(username="carol", password=LAB_PASSWORD) is None
    assert authenticate(username="alice", password=LAB_PASSWORD) is not None


def test_group_query(auth_ldap):
    query = (LDAPGroupQuery(group("Staff")) | LDAPGroupQuery(group("Engineering"))) & ~(
        LDAPGroupQuery(group("Cycle B"))
    )
    auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=GroupOfNamesType(),
        REQUIRE_GROUP=query,
    )
    assert authenticate(username="carol", password=LAB_PASSWORD) is not None  # Staff
    assert authenticate(username="jdoe", password=LAB_PASSWORD) is not None  # Staff
    assert authenticate(username="bob", password=LAB_PASSWORD) is None  # Engineering, Cycle B
    assert authenticate(username="erin", password=LAB_PASSWORD) is None  # neither


@pytest.mark.parametrize(
    ("group_type", "allowed"), [(GroupOfNamesType, False), (NestedGroupOfNamesType, True)]
)
def test_nested_group_type(auth_ldap, group_type, allowed):
    """alice is in Everyone through Rocket Team < Engineering < R&D < Staff < Everyone."""
    auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=group_type(),
        REQUIRE_GROUP=group("Everyone"),
    )
    assert (authenticate(username="alice", password=LAB_PASSWORD) is not None) is allowed


def test_user_flags_by_group(auth_ldap):
    auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=NestedGroupOfNamesType(),
        USER_FLAGS_BY_GROUP={
            "is_staff": group("Staff"),
            "is_superuser": [group("Cycle A"), group("Rocket Team")],
        },
    )
    alice = authenticate(username="alice", password=LAB_PASSWORD)
    carol = authenticate(username="carol", password=LAB_PASSWORD)
    erin = authenticate(username="erin", password=LAB_PASSWORD)
    assert (alice.is_staff, alice.is_superuser) == (True, True)
    assert (carol.is_staff, carol.is_superuser) == (True, False)
    assert (erin.is_staff, erin.is_superuser) == (False, True)


def test_mirror_groups(auth_ldap):
    auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=NestedGroupOfNamesType(),
        MIRROR_GROUPS=True,
    )
    alice = authenticate(username="alice", password=LAB_PASSWORD)
    local = Group.objects.create(name="Local only")
    alice.groups.add(local)
    alice = authenticate(username="alice", password=LAB_PASSWORD)
    assert {g.name for g in alice.groups.all()} == {
        "Rocket Team", "Engineering", "R&D", "Staff", "Everyone"
    }  # fmt: skip


def test_mirror_groups_whitelist_and_except(auth_ldap, settings):
    auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=NestedGroupOfNamesType(),
        MIRROR_GROUPS=["Staff", "Local"],
    )
    carol = authenticate(username="carol", password=LAB_PASSWORD)
    carol.groups.add(Group.objects.create(name="Kept"))
    carol = authenticate(username="carol", password=LAB_PASSWORD)
    assert {g.name for g in carol.groups.all()} == {"Staff", "Kept"}

    settings.AUTH_LDAP_MIRROR_GROUPS = None
    settings.AUTH_LDAP_MIRROR_GROUPS_EXCEPT = ["Kept", "Sales"]
    carol = authenticate(username="carol", password=LAB_PASSWORD)
    assert {g.name for g in carol.groups.all()} == {
        "Staff", "Everyone", "All Bulk", "Kept"
    }  # fmt: skip


def test_find_group_perms_and_get_user(auth_ldap):
    backend = auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=NestedGroupOfNamesType(),
        FIND_GROUP_PERMS=True,
    )
    permission = Permission.objects.get(codename="view_group")
    Group.objects.create(name="Everyone").permissions.add(permission)
    alice = authenticate(username="alice", password=LAB_PASSWORD)
    assert alice.groups.count() == 0  # no mirroring: permissions come from LDAP groups
    assert backend.get_group_permissions(alice) == {"auth.view_group"}
    again = backend.get_user(alice.pk)
    assert again.ldap_user is not None
    assert again.has_perm("auth.view_group")
    assert backend.has_module_perms(again, "auth")
    erin = authenticate(username="erin", password=LAB_PASSWORD)  # Everyone, Cycle A
    assert erin.has_perm("auth.view_group")
    bulk_user = backend.populate_user("bulk0001")  # All Bulk only
    assert not backend.get_user(bulk_user.pk).has_perm("auth.view_group")


def test_authorize_all_users(auth_ldap):
    backend = auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=NestedGroupOfNamesType(),
        FIND_GROUP_PERMS=True,
        AUTHORIZE_ALL_USERS=True,
    )
    Group.objects.create(name="Sales").permissions.add(
        Permission.objects.get(codename="add_group")
    )
    local = User.objects.create(username="carol")  # never logged in through LDAP
    assert backend.get_all_permissions(local) == {"auth.add_group"}


def test_cache_timeout(auth_ldap):
    auth_ldap(
        USER_SEARCH=search(),
        GROUP_SEARCH=group_search(),
        GROUP_TYPE=GroupOfNamesType(),
        REQUIRE_GROUP=group("Rocket Team"),
        CACHE_TIMEOUT=3600,
    )
    with SearchSpy().active() as first:
        assert authenticate(username="alice", password=LAB_PASSWORD) is not None
    with SearchSpy().active() as second:
        assert authenticate(username="alice", password=LAB_PASSWORD) is not None
    assert [c[0] for c in first.calls][0] == ldif.PEOPLE_DN
    assert ldif.PEOPLE_DN not in [c[0] for c in second.calls]  # the DN came from the cache


# -- extending the class ---------------------------------------------------------------------


@pytest.mark.parametrize("base", [LDAPBackend, ADLDAPBackend], ids=list(CLASSES))
def test_subclass_hooks_default_settings_and_prefix(slapd_lab, settings, base):
    class Custom(base):
        settings_prefix = "CUSTOM_LDAP_"
        default_settings = {
            "SERVER_URI": slapd_lab.uri,
            "USER_DN_TEMPLATE": ENGINEERING_TEMPLATE,
        }

        def ldap_to_django_username(self, username):
            return f"ldap_{username}"

        def django_to_ldap_username(self, username):
            return username[5:]

    settings.CUSTOM_LDAP_BIND_DN = ldif.READER_DN
    settings.CUSTOM_LDAP_BIND_PASSWORD = ldif.READER_PASSWORD
    settings.CUSTOM_LDAP_USER_ATTR_MAP = {"first_name": "givenName"}
    backend = Custom()
    user = backend.authenticate(None, username="alice", password=LAB_PASSWORD)
    assert (user.username, user.first_name) == ("ldap_alice", "Alice")
    again = backend.get_user(user.pk)
    assert again.ldap_username == "alice" and again.ldap_user._username == "alice"


def test_authenticated_user_can_be_copied_and_pickled(auth_ldap):
    auth_ldap(USER_SEARCH=search())
    user = authenticate(username="alice", password=LAB_PASSWORD)
    assert copy.deepcopy(user).ldap_user.dn == user.ldap_user.dn
    assert pickle.loads(pickle.dumps(user)).username == "alice"


def test_login_through_the_test_client(auth_ldap, client, settings):
    auth_ldap(USER_SEARCH=search())
    settings.ROOT_URLCONF = "tests.backend_helpers"
    response = client.post("/login/", {"username": "alice", "password": LAB_PASSWORD})
    assert response.status_code == 302
    assert client.get("/home/").content == b"user=alice"

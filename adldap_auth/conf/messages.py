"""Every problem the settings can have: a stable id (``adldap_auth.E001``...), a level, a
summary for the documentation and the message and hint templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core import checks

Message = checks.CheckMessage


@dataclass(frozen=True)
class Check:
    """One kind of problem: a stable id, a level, a summary for the docs, message templates.

    Calling it with the setting's full name and the template fields gives the message.
    """

    id: str
    level: type[Message]
    summary: str
    msg: str
    hint: str

    def __call__(self, setting: str, **fields: Any) -> Message:
        return self.level(
            self.msg.format(setting=setting, **fields),
            hint=self.hint.format(setting=setting, **fields),
            obj=setting,
            id=self.id,
        )


E = checks.Error
W = checks.Warning

E001 = Check(
    "adldap_auth.E001",
    E,
    "A required connection setting is missing or empty.",
    "{setting} is required but is {state}.",
    "adldap-auth needs LDAP_SYNC_BIND_URI, LDAP_SYNC_BIND_DN, LDAP_SYNC_BIND_PASS and "
    "LDAP_SYNC_BIND_SEARCH. Example: {setting} = {example}",
)
E002 = Check(
    "adldap_auth.E002",
    E,
    "LDAP_SYNC_BIND_URI is not a URI string or a list of them.",
    "{setting} must be a URI string or a non-empty list of URI strings, not {value}.",
    '{setting} = ["ldaps://dc1.example.com", "ldaps://dc2.example.com"] tries the servers '
    "in order.",
)
E003 = Check(
    "adldap_auth.E003",
    E,
    "A URI of LDAP_SYNC_BIND_URI is not ldap://, ldaps:// or ldapi://.",
    "{setting} has {uri!r}, which is not an ldap://, ldaps:// or ldapi:// URI.",
    "Write each server as a URI, e.g. ldaps://dc1.example.com (or ldap://dc1.example.com with "
    "LDAP_SYNC_START_TLS = True).",
)
E004 = Check(
    "adldap_auth.E004",
    E,
    "A setting that must be a bool is not one.",
    "{setting} must be True or False, not {value}.",
    'Use a Python bool: strings such as "false" and numbers are not accepted.',
)
E005 = Check(
    "adldap_auth.E005",
    E,
    "A setting that must be an integer in a range is not.",
    "{setting} must be an integer {bounds}, not {value}.",
    "{advice}",
)
E006 = Check(
    "adldap_auth.E006",
    E,
    "A duration in seconds is not a positive number.",
    "{setting} must be a number of seconds greater than 0, not {value}.",
    "{advice}",
)
E007 = Check(
    "adldap_auth.E007",
    E,
    "A setting that must be a string is not one, or is empty.",
    "{setting} must be {expected}, not {value}.",
    "{advice}",
)
E008 = Check(
    "adldap_auth.E008",
    E,
    "A setting that must be a list of strings is not one.",
    "{setting} must be a list of strings; {detail}.",
    "Example: {setting} = {example}",
)
E009 = Check(
    "adldap_auth.E009",
    E,
    "An attribute map is not a dict of strings to strings.",
    "{setting} must be a dict of LDAP attribute names to model field names; {detail}.",
    "Example: {setting} = {example}",
)
E010 = Check(
    "adldap_auth.E010",
    E,
    "A setting has a value outside its choices.",
    "{setting} must be one of {choices}, not {value}.",
    "{advice}",
)
E011 = Check(
    "adldap_auth.E011",
    E,
    "A search filter is not a valid LDAP filter (RFC 4515).",
    "{setting} is not a valid LDAP filter ({problem}): {value}.",
    "Write every component in parentheses, e.g. (&(objectClass=user)(mail=*)); escape literal "
    "parentheses, '*' and '\\' in values as \\28, \\29, \\2a and \\5c.",
)
E012 = Check(
    "adldap_auth.E012",
    E,
    "A search base or group DN is not a valid distinguished name.",
    "{setting} has {value}, which is not a valid distinguished name.",
    "Write a DN such as OU=People,DC=example,DC=com (not a domain name like example.com).",
)
E013 = Check(
    "adldap_auth.E013",
    E,
    "A filter lacks the placeholder its mode needs.",
    "{setting} has no {placeholder} placeholder, so {consequence}.",
    "Example: {setting} = {example!r}",
)
E014 = Check(
    "adldap_auth.E014",
    E,
    "LDAP_SYNC_USER_ATTRIBUTES maps nothing to the username field.",
    "{setting} maps no LDAP attribute to the username field {field!r}{origin}.",
    'Add e.g. "sAMAccountName": "{field}" (Active Directory), "uid": "{field}" (OpenLDAP) or '
    '"mail": "{field}" (a model that logs in by e-mail address). The username field is '
    "LDAP_SYNC_USERNAME_FIELD, or else the user model's USERNAME_FIELD.",
)
E015 = Check(
    "adldap_auth.E015",
    E,
    "LDAP_SYNC_USER_ATTRIBUTES maps to a field the user model lacks, or that is not text.",
    "{setting} maps {attribute!r} to {field!r}, which is {problem} of {model}{origin}.",
    "The fields of {model} an attribute may map to: {fields}. Read other attributes with "
    "LDAP_SYNC_USER_EXTRA_ATTRIBUTES and fill a model of LDAP_SYNC_USER_EXTRA_PROFILES.",
)
E016 = Check(
    "adldap_auth.E016",
    E,
    "LDAP_SYNC_USERNAME_FIELD is not a unique field of the user model.",
    "{setting} is {value}, which is not {problem} of {model}.",
    "Remove {setting} to use the user model's USERNAME_FIELD, or name a unique field.",
)
E017 = Check(
    "adldap_auth.E017",
    E,
    'LDAP_SYNC_GROUP_ATTRIBUTES maps nothing to the group\'s "name".',
    '{setting} maps no LDAP attribute to "name", the field that identifies a group.',
    'Add e.g. "cn": "name".',
)
E018 = Check(
    "adldap_auth.E018",
    E,
    "LDAP_SYNC_GROUP_ATTRIBUTES names a field auth.Group lacks.",
    "{setting} maps {attribute!r} to {field!r}, which is not a field of auth.Group.",
    'Groups have one field to fill: "name".',
)
E019 = Check(
    "adldap_auth.E019",
    E,
    "LDAP_SYNC_USER_EXTRA_PROFILES names no installed model.",
    "{setting} has {value}, which is not an installed model ({detail}).",
    'Name each profile model as "app_label.ModelName", from an app in INSTALLED_APPS.',
)
E020 = Check(
    "adldap_auth.E020",
    E,
    "A callback path cannot be imported as a callable.",
    "{setting} has {value}, which cannot be imported as a callable ({detail}).",
    'Give the dotted path of a function, e.g. "adldap_auth.callbacks.removed_user_deactivate".',
)
E021 = Check(
    "adldap_auth.E021",
    E,
    "LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT has a malformed item.",
    "{setting} must be a list of group names or of (dn, attributes) pairs; {detail}.",
    'Example: {setting} = [("CN=Domain Users,CN=Users,DC=example,DC=com", '
    '{{"cn": [b"Domain Users"]}})]',
)
E022 = Check(
    "adldap_auth.E022",
    E,
    "LDAP_SYNC_REMOVAL_THRESHOLD is not a count, a percentage or None.",
    '{setting} must be an integer >= 0, a percentage string such as "10%" (above 0%, at most '
    '100%), a dict such as {{"percent": 10, "minimum": 10}}, or None; not {value}: {detail}.',
    "A run that would remove more users, groups or memberships than this is refused unless "
    "forced; None means no limit.",
)
E023 = Check(
    "adldap_auth.E023",
    E,
    "LDAP_SYNC_REMOVAL_GRACE is not None, seconds >= 0 or a timedelta.",
    "{setting} must be None, a number of seconds >= 0 or a datetime.timedelta >= 0, not {value}.",
    "Example: {setting} = datetime.timedelta(days=30)",
)
E024 = Check(
    "adldap_auth.E024",
    E,
    "LDAP_SYNC_USER_THUMBNAILPHOTO_NAME is not a safe file name.",
    "{setting} {problem}: {value}.",
    "Give a file name without directories, using {{username}}, {{uuid4}} and strftime codes, "
    "e.g. {{username}}_{{uuid4}}.jpg; the directory is the ImageField's upload_to.",
)
E025 = Check(
    "adldap_auth.E025",
    E,
    "LDAP_SYNC_INCREMENTAL_TIMESTAMPFORMAT cannot format a timestamp.",
    "{setting} cannot format a timestamp ({problem}): {value}.",
    'Active Directory\'s generalized time is "%Y%m%d%H%M%S.0Z".',
)
E026 = Check(
    "adldap_auth.E026",
    E,
    "LDAP_SYNC_CA_FILE is not a readable file.",
    "{setting} {problem}: {value}.",
    "Give the path of a PEM file with the CA certificate(s) that signed the directory's "
    "certificate, readable by the user that runs Django.",
)
E027 = Check(
    "adldap_auth.E027",
    E,
    "LDAP_SYNC_REQUIRE_TLS is set but a URI is clear text.",
    "{setting} has {uri!r}, a clear-text URI, but LDAP_SYNC_REQUIRE_TLS is True and "
    "LDAP_SYNC_START_TLS is not.",
    "Use ldaps:// or set LDAP_SYNC_START_TLS = True.",
)
E028 = Check(
    "adldap_auth.E028",
    E,
    "LDAP_SYNC_USER_PROFILE_ATTRIBUTES is not a dict of attribute maps.",
    "{setting} {detail}.",
    'Example: {setting} = {{"people.Employee": {{"telephoneNumber": "phone", '
    '"physicalDeliveryOfficeName": "office"}}}}',
)
E029 = Check(
    "adldap_auth.E029",
    E,
    "LDAP_SYNC_USER_PROFILE_ATTRIBUTES names a model that is not a profile being synced.",
    "{setting} {detail}.",
    'Name each model as "app_label.ModelName", and list it in LDAP_SYNC_USER_EXTRA_PROFILES.',
)
E030 = Check(
    "adldap_auth.E030",
    E,
    "LDAP_SYNC_USER_PROFILE_ATTRIBUTES maps to a field the sync cannot write.",
    "{setting} {detail}.",
    "Map each attribute to a char or text field of the profile model, or a photo attribute "
    "(thumbnailPhoto, jpegPhoto) to a file or image field.",
)
E031 = Check(
    "adldap_auth.E031",
    E,
    "LDAP_SYNC_USER_PROFILE_ATTRIBUTES fills one field twice or lists an attribute twice.",
    "{setting} {detail}.",
    "Keep one attribute per field; attribute names are compared ignoring case.",
)

W001 = Check(
    "adldap_auth.W001",
    W,
    "A clear-text ldap:// URI without StartTLS.",
    "{setting} has {uri!r}: without LDAP_SYNC_START_TLS the bind password and the directory's "
    "data cross the network in clear text.",
    "Use ldaps:// or set LDAP_SYNC_START_TLS = True (and LDAP_SYNC_REQUIRE_TLS = True to make "
    "this an error).",
)
W002 = Check(
    "adldap_auth.W002",
    W,
    "LDAP_SYNC_BIND_PASS is empty.",
    "{setting} is empty: a simple bind with an empty password is an unauthenticated bind "
    "(RFC 4513, 5.1.2), which servers accept without checking anything.",
    "Set the password of the reader account in LDAP_SYNC_BIND_DN, e.g. from the environment.",
)
W003 = Check(
    "adldap_auth.W003",
    W,
    "LDAP_SYNC_REQUIRE_CERT is False.",
    "{setting} is False: the directory's TLS certificate is not verified, so anyone on the path "
    "can pose as the directory and receive the bind password.",
    "Set LDAP_SYNC_CA_FILE to the CA that signed the directory's certificate and remove {setting}.",
)
W004 = Check(
    "adldap_auth.W004",
    W,
    "LDAP_SYNC_BIND_PAGESIZE is above Active Directory's MaxPageSize.",
    "{setting} is {value}, above Active Directory's default MaxPageSize of 1000, which AD "
    "applies instead.",
    "Use 1000 or less unless the domain's LDAP policy raises MaxPageSize.",
)
W005 = Check(
    "adldap_auth.W005",
    W,
    'LDAP_SYNC_GROUP_MEMBERSHIP_MODE is the legacy "filter" mode.',
    '{setting} is "filter": memberships are read with one search per user, as '
    "django-adldap-sync did, which is slow on large directories.",
    'Use "graph" (the default), which reads each group once per run.',
)
W006 = Check(
    "adldap_auth.W006",
    W,
    'A profile model has no OneToOneField "user" to the user model.',
    '{setting} has {value}, which has no OneToOneField named "user" to {user_model}, so the '
    "sync cannot find or create its rows.",
    "Add user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE) "
    "to the model.",
)
W007 = Check(
    "adldap_auth.W007",
    W,
    "An LDAP_SYNC_* setting that adldap-auth does not know (a typo?).",
    "{setting} is not an adldap-auth setting and is ignored.",
    "{advice}",
)
W008 = Check(
    "adldap_auth.W008",
    W,
    "The old misspelled name LDAP_LDAP_SYNC_USER_CALLBACKS is set.",
    "{setting} is the misspelled name that django-adldap-sync read; {state}.",
    "Rename it to {new}.",
)
# Deployment checks (``manage.py check --deploy`` only; see the last section of this module).
W009 = Check(
    "adldap_auth.W009",
    W,
    "The bind account is a domain administrator (deploy check).",
    "{setting} {account!r} is a member of {groups}: the sync only reads the directory, yet "
    "this account can change all of it, and its password sits in the site's settings.",
    "Bind with a least-privilege account (any domain user can read users and groups), or "
    "remove this account from {groups}.",
)
W010 = Check(
    "adldap_auth.W010",
    W,
    "The deploy check could not bind to the directory.",
    "{setting}: the deploy check could not bind to the directory to look at the bind "
    "account's privileges: {error}.",
    "Check LDAP_SYNC_BIND_URI, LDAP_SYNC_BIND_DN and LDAP_SYNC_BIND_PASS; "
    "'manage.py syncldap --dry-run' reports the same error.",
)
W011 = Check(
    "adldap_auth.W011",
    W,
    "A mapped attribute is not in the directory's schema (deploy check).",
    "{setting} maps {attribute!r}, which is not an attribute type of the directory's schema, so "
    "its field would stay empty.",
    "Check the spelling against the server's schema; a batch run reports the same warning.",
)

#: Every check id with a short description, in id order (for the documentation).
CHECK_IDS: dict[str, str] = {
    c.id: c.summary
    for c in sorted(
        # By name first: isinstance() on the lazy ``settings`` global would configure Django.
        (v for k, v in dict(globals()).items() if k[:1] in "EW" and isinstance(v, Check)),
        key=lambda c: c.id,
    )
}

import time
import ldap
import pytest
from ldap.filter import escape_filter_chars as esc
from adldap_auth.directory.decoding import sid_to_str

IC = "1.2.840.113556.1.4.1941"

def t(conn, base, scope, f, attrs, n=20):
    start = time.monotonic()
    for _ in range(n):
        r = conn.search_s(base, scope, f, attrs)
    return (time.monotonic() - start) / n * 1000, len([d for d, _ in r if d])

def test_prof(samba_dc):
    conn = samba_dc.reader_connection()
    B = samba_dc.base_dn
    for key in ["alice", "bulk0001"]:
        dn = samba_dc.user_dn(key)
        (udn, a), = [x for x in conn.search_s(samba_dc.lab_dn, 2, f"(sAMAccountName={key})", ["objectSid", "primaryGroupID", "memberOf"]) if x[0]]
        sid = sid_to_str(a["objectSid"][0]); psid = sid.rsplit("-", 1)[0] + "-513"
        print(key)
        print(" user search", t(conn, samba_dc.lab_dn, 2, f"(&(objectCategory=person)(objectClass=user)(sAMAccountName={key}))", ["cn", "memberOf", "thumbnailPhoto"]))
        print(" A full", t(conn, B, 2, f"(&(objectClass=group)(|(member:{IC}:={esc(dn)})(objectSid={psid})(member:{IC}:=<SID={psid}>)))", ["cn", "memberOf", "objectGUID", "objectSid"]))
        print(" B user IC", t(conn, B, 2, f"(&(objectClass=group)(member:{IC}:={esc(dn)}))", ["cn"]))
        print(" C sid", t(conn, B, 2, f"(&(objectClass=group)(objectSid={psid}))", ["cn"]))
        print(" D sid IC", t(conn, B, 2, f"(&(objectClass=group)(member:{IC}:=<SID={psid}>))", ["cn"]))
        print(" E tokenGroups", t(conn, dn, 0, "(objectClass=*)", ["tokenGroups"]))
        print(" F direct member", t(conn, B, 2, f"(&(objectClass=group)(member={esc(dn)}))", ["cn"]))
        print(" G memberOf IC", t(conn, samba_dc.lab_dn, 2, f"(&(objectClass=group)(member:{IC}:={esc(dn)}))", ["cn"]))

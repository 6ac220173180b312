"""Tests against the Samba AD domain controller of the lab (most are marked ``samba``)."""

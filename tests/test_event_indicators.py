"""Windows events as Winlogbeat / Elastic Agent ship them: the features read their event data, and
the event-type indicators (mitre/data/event_indicators.yaml) fire on what each event shows — and
stay quiet on the benign events of the same type."""

from __future__ import annotations

import pytest

from mitre.features import event_type, extract_features
from mitre.indicators import CONTEXT_WEIGHT, is_context


def event(channel: str, event_id: int, **data: str) -> dict:
    return {"winlog": {"channel": channel, "event_id": event_id, "event_data": data}}


SYSMON = "Microsoft-Windows-Sysmon/Operational"
LSASS = r"C:\Windows\system32\lsass.exe"


def fired(indicators, alert) -> dict[str, tuple[str, ...]]:
    return {h.indicator_id: h.techniques for h in indicators.evaluate(extract_features(alert))}


def test_event_type_from_channel_provider_or_dataset():
    assert event_type(extract_features(event("Security", 4662, AccessMask="0x100")).fields) == "security:4662"
    assert event_type(extract_features(event(SYSMON, 10, GrantedAccess="0x1010")).fields) == "sysmon:10"
    agent = {"event": {"code": "7045", "dataset": "system.system"}, "winlog": {"event_data": {"ImagePath": "x"}}}
    assert event_type(extract_features(agent).fields) == "system:7045"
    assert event_type(extract_features({"event": {"code": "4625"}, "message": "x"}).fields) is None


def test_event_data_fills_ecs_fields_and_names_identifiers():
    features = extract_features(
        event(
            "Security",
            4688,
            NewProcessName=r"C:\Windows\System32\cmd.exe",
            CommandLine="cmd /c whoami",
            ParentProcessName=r"C:\Windows\System32\services.exe",
        )
    )
    assert features.fields["process.command_line"] == "cmd /c whoami"
    assert features.fields["process.name"] == "cmd.exe"
    assert features.fields["process.parent.name"] == "services.exe"
    kerberos = extract_features(event("Security", 4769, TicketEncryptionType="0x17", ServiceName="svc_sql"))
    assert kerberos.fields["winlog.event_data.TicketEncryptionType"] == "0x17 (RC4-HMAC)"
    dcsync = extract_features(event("Security", 4662, Properties="{1131F6AA-9C07-11D1-F79F-00C04FC2DCD2}"))
    assert dcsync.fields["winlog.event_data.Properties"].endswith("(DS-Replication-Get-Changes)")


ATTACKS = [
    (event(SYSMON, 10, SourceImage=r"C:\Users\a\m.exe", TargetImage=LSASS, GrantedAccess="0x1010"), "T1003.001"),
    (
        event(
            SYSMON,
            10,
            SourceImage=r"C:\Temp\p.exe",
            TargetImage=LSASS,
            GrantedAccess="0x1FFFFF",
            CallTrace="C:\\Windows\\SYSTEM32\\ntdll.dll+9d1e4|C:\\Windows\\System32\\dbgcore.DLL+6d0f",
        ),
        "T1003.001",
    ),
    (event(SYSMON, 8, SourceImage=r"C:\Temp\i.exe", TargetImage=r"C:\Windows\explorer.exe"), "T1055"),
    (event(SYSMON, 20, Operation="Created", Name="evil", Destination="powershell -nop -w hidden"), "T1546.003"),
    (event(SYSMON, 17, PipeName=r"\PSEXESVC-WS01-4412-stdin", Image="System"), "T1569.002"),
    (event("Security", 4662, SubjectUserName="jdoe", Properties="{1131f6ad-9c07-11d1-f79f-00c04fc2dcd2}"), "T1003.006"),
    (
        event("Security", 4769, ServiceName="svc_sql", TicketEncryptionType="0x17", TicketOptions="0x40810000"),
        "T1558.003",
    ),
    (event("Security", 4768, TargetUserName="nopreauth", PreAuthType="0", TicketEncryptionType="0x17"), "T1558.004"),
    (
        event("Security", 4624, LogonType="9", LogonProcessName="seclogo", AuthenticationPackageName="Negotiate"),
        "T1550.002",
    ),
    (
        event("System", 7045, ServiceName="BTOBTO", ImagePath=r"%COMSPEC% /Q /c echo dir > \\127.0.0.1\C$\o 2>&1"),
        "T1569.002",
    ),
    (event("Security", 4697, ServiceName="x", ServiceFileName=r"C:\Users\Public\svc.exe"), "T1543.003"),
    (
        event("Security", 4698, TaskName=r"\Upd", TaskContent="<Exec><Command>powershell.exe</Command></Exec>"),
        "T1053.005",
    ),
    (event("Security", 4732, MemberName="CN=eve", TargetUserName="Administrators"), "T1098.007"),
    (event("Security", 5145, ShareName=r"\\*\IPC$", RelativeTargetName="svcctl"), "T1021.002"),
    (event("Security", 1102, SubjectUserName="eve"), "T1070.001"),
    (event("Security", 4719, SubcategoryGuid="{0CCE922B-69AE-11D9-BED3-505054503030}"), "T1562.002"),
    (event("System", 7040, param1="Windows Defender Antivirus Service", param2="auto start", param3="disabled"), None),
    (event("Microsoft-Windows-WMI-Activity/Operational", 5861, Namespace="//./root/subscription"), "T1546.003"),
    (
        event("Microsoft-Windows-Windows Defender/Operational", 1116, **{"Threat Name": "HackTool:Win32/Mimikatz"}),
        "T1003",
    ),
]


@pytest.mark.parametrize(("alert", "technique"), [a for a in ATTACKS if a[1]])
def test_event_shows_its_technique(indicators, alert, technique):
    assert any(technique in techniques for techniques in fired(indicators, alert).values())


BENIGN = [
    # Defender and the WMI provider query lsass without memory-read rights, or are excluded.
    event(
        SYSMON,
        10,
        SourceImage=r"C:\ProgramData\Microsoft\Windows Defender\MsMpEng.exe",
        TargetImage=LSASS,
        GrantedAccess="0x1010",
    ),
    event(SYSMON, 10, SourceImage=r"C:\Program Files\Agent\agent.exe", TargetImage=LSASS, GrantedAccess="0x1000"),
    # Domain controllers replicate with their machine accounts.
    event("Security", 4662, SubjectUserName="DC02$", Properties="{1131f6ad-9c07-11d1-f79f-00c04fc2dcd2}"),
    # AES tickets, and RC4 tickets for computer accounts, are ordinary.
    event("Security", 4769, ServiceName="svc_sql", TicketEncryptionType="0x12"),
    event("Security", 4769, ServiceName="FILESRV01$", TicketEncryptionType="0x17"),
    event("Security", 4768, TargetUserName="alice", PreAuthType="2", TicketEncryptionType="0x12"),
    # A driver and a program's service are installed all the time.
    event("System", 7045, ServiceName="vmci", ImagePath=r"\SystemRoot\System32\drivers\vmci.sys"),
    event(
        "System",
        7045,
        ServiceName="GoogleUpdater",
        ImagePath=r'"C:\Program Files (x86)\Google\Update\updater.exe" --system',
    ),
    event("Security", 4624, LogonType="3", LogonProcessName="Kerberos", AuthenticationPackageName="Kerberos"),
    event("Security", 4616, ProcessName=r"C:\Windows\System32\svchost.exe"),
]


@pytest.mark.parametrize("alert", BENIGN)
def test_benign_event_of_the_same_type_stays_quiet(indicators, alert):
    assert fired(indicators, alert) == {}


def test_security_service_disabled_by_name(indicators):
    alert = event("System", 7036, param1="Windows Defender Antivirus Service", param2="stopped")
    assert fired(indicators, alert) == {"system-security-service-disabled": ("T1562.001",)}


def test_parent_command_line_is_context_not_the_childs_own_evidence(indicators):
    """An encoded PowerShell stager in the parent's command line describes the parent."""
    stager = "powershell.exe -nop -w hidden -enc " + "SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQA" * 2
    child = {
        "process": {
            "name": "reg.exe",
            "command_line": r"reg add HKCU\Software\Classes\ms-settings\shell\open\command /d cmd.exe /f",
            "parent": {"name": "powershell.exe", "command_line": stager},
        }
    }
    hits = extract_features(child)
    by_id = {h.indicator_id: h for h in indicators.evaluate(hits)}
    assert "uac-bypass-registry" in by_id and not is_context(by_id["uac-bypass-registry"])
    hidden = by_id["hidden-window"]
    assert is_context(hidden) and hidden.confidence <= 0.99 * CONTEXT_WEIGHT


def test_cloud_audit_parameters_show_their_technique(indicators):
    forward = {
        "event": {"action": "Set-Mailbox", "module": "o365"},
        "o365": {"audit": {"Parameters": [{"Name": "ForwardingSmtpAddress", "Value": "smtp:drop@example.net"}]}},
    }
    assert fired(indicators, forward)["m365-forwarding-parameters"] == ("T1114.003",)
    pod = {
        "kubernetes": {
            "audit": {
                "verb": "create",
                "objectRef": {"resource": "pods"},
                "requestObject": {"spec": {"hostPID": True, "containers": [{"name": "x", "securityContext": {}}]}},
            }
        }
    }
    assert "T1611" in fired(indicators, pod)["kubernetes-host-namespace-pod"]
    quiet = {
        "kubernetes": {"audit": {"verb": "create", "objectRef": {"resource": "pods"}, "requestObject": {"spec": {}}}}
    }
    assert fired(indicators, quiet) == {}


def test_short_event_field_matches_show_their_event_and_field(indicators):
    """Evidence an analyst can read: 'security:4768 PreAuthType=0', not '0'."""
    alert = event("Security", 4768, TargetUserName="svc", PreAuthType="0", TicketEncryptionType="0x17")
    (hit,) = indicators.evaluate(extract_features(alert))
    assert hit.matched == "security:4768 PreAuthType=0"

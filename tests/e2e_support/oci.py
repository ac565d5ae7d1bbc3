"""What an OCI registry serves, asked over its HTTP API (the test's view, independent of the engine)."""

from __future__ import annotations

import urllib.request

MANIFEST_TYPES = ", ".join(["application/vnd.docker.distribution.manifest.v2+json",
                            "application/vnd.oci.image.manifest.v1+json"])


def registry_serves(reference: str) -> bool:
    """`host/repo@sha256:…`: the registry answers for that manifest, under that very digest."""
    host_and_repo, digest = reference.split("@")
    host, repo = host_and_repo.split("/", 1)
    request = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{digest}", method="HEAD",
                                     headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status == 200 and response.headers["Docker-Content-Digest"] == digest

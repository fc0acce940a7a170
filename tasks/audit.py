"""`keyflow audit`: is everything keyflow keeps at rest encrypted, and is nothing left behind?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from config.errors import KeyflowError, RetryableError
from config.models import Profile
from tasks.cleanup import LEASE_SECONDS
from tasks.resources import resources_for
from tasks.transforms.staging import run_of, staged_runs


@dataclass(frozen=True)
class Finding:
    """One check: what was looked at, whether it passed, and why."""

    check: str
    target: str
    ok: bool
    detail: str


def audit(profile: Profile, max_age: timedelta = timedelta(hours=24), now: datetime | None = None) -> list[Finding]:
    """Bucket default encryption, key-table SSE, and every staged object's SSE and age.

    An object older than ``max_age`` is a leftover (``keyflow cleanup`` removes them), unless its run is still
    running (its lease is fresh): a long load is not a leftover.
    """
    findings: list[Finding] = []
    resources = resources_for(profile)
    store = resources.object_store()
    bucket = f"s3://{profile.bucket}"
    try:
        rule = store.default_encryption()
    except RetryableError:
        raise  # the endpoint cannot be reached (botocore already retried): nothing else can be checked either
    except KeyflowError as exc:
        rule, findings = None, [Finding("bucket encryption", bucket, False, str(exc))]
    if not findings:
        if rule is None:
            findings.append(Finding("bucket encryption", bucket, False, "no default encryption configured"))
        elif profile.kms_key_id and rule.get("SSEAlgorithm") != "aws:kms":
            findings.append(
                Finding(
                    "bucket encryption", bucket, False, f"{rule.get('SSEAlgorithm')}, but the profile names a KMS key"
                )
            )
        else:
            findings.append(Finding("bucket encryption", bucket, True, str(rule.get("SSEAlgorithm"))))

    table = f"dynamodb:{profile.keys_table}"
    try:
        status = resources.key_store().sse_status()
        findings.append(
            Finding("table encryption", table, status in ("ENABLED", "ENABLING", "UPDATING"), f"SSE {status or 'off'}")
        )
    except KeyflowError as exc:
        findings.append(Finding("table encryption", table, False, str(exc)))

    now = now or datetime.now(UTC)
    prefix = profile.prefix.strip("/") + "/"
    objects = list(store.list_objects(prefix))
    running = {run.prefix for run in staged_runs(profile.prefix, objects) if run.live(now, LEASE_SECONDS)}
    count = 0
    for obj in objects:
        count += 1
        key = obj["Key"]
        where = f"{bucket}/{key}"
        sse = store.head(key).get("ServerSideEncryption")
        if not sse:
            findings.append(Finding("object encryption", where, False, "stored without server-side encryption"))
        age = now - obj["LastModified"]
        if age > max_age and not profile.keep_staged and run_of(profile.prefix, key) not in running:
            findings.append(
                Finding("leftover staged file", where, False, f"{age.total_seconds() / 3600:.1f} h old; a run failed?")
            )
    findings.append(Finding("staged objects", f"{bucket}/{prefix}", True, f"{count} object(s) checked"))
    return findings

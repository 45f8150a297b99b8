"""The lifecycle rules of the buckets behind the lake and the archive (a policy's ``buckets``).

GCS deletes objects, or moves them to a colder storage class, by their age, once a bucket's
lifecycle says so; opsbook does not delete objects itself. :func:`plan` reads each bucket's
lifecycle (google-cloud-storage), says which of the policy's rules it lacks, and counts the
objects under the rule's prefix already older than its age (what GCS will act on once the rule
is set). :func:`apply` adds the missing rules, keeping every rule the bucket has (a rule set by
hand is never removed), and reads the lifecycle back. A lake or archive in a local folder has
no lifecycle: its rules are reported as not applicable.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from opsbook.ops.policy import BucketRule, Policy


@dataclass
class BucketPlan:
    rule: BucketRule
    root: str  # LAKE_URL or ARCHIVE_URL
    bucket: str | None  # None: the root is a folder
    prefix: str  # the rule's prefix inside the bucket
    status: str  # to set | set | not a bucket | error
    objects: int = 0  # objects under the prefix older than the rule's age (and not yet in its class)
    bytes: int = 0
    note: str = ""

    @property
    def gcs_rule(self) -> dict[str, Any]:
        return gcs_rule(self.rule, self.prefix)


def gcs_rule(rule: BucketRule, prefix: str) -> dict[str, Any]:
    """The rule as the GCS JSON API writes it."""
    action: dict[str, Any] = {"type": "Delete"}
    if rule.action == "set_storage_class":
        action = {"type": "SetStorageClass", "storageClass": rule.storage_class}
    return {"action": action, "condition": {"age": rule.age_days, "matchesPrefix": [prefix]}}


def _same(a: dict, b: dict) -> bool:
    return dict(a.get("action", {})) == b["action"] and dict(a.get("condition", {})) == b["condition"]


def plan(policy: Policy, as_of: dt.date) -> list[BucketPlan]:
    """Each bucket rule of the policy: set already, or to set, and what GCS will act on."""
    from opsbook import config
    from opsbook.stores import uri

    plans = []
    for rule in policy.buckets:
        root = config.lake_url() if rule.root == "lake" else config.archive_url()
        if not uri.is_remote(root):
            plans.append(
                BucketPlan(rule, root, None, rule.prefix, "not a bucket", note=f"{root} is a folder: no lifecycle")
            )
            continue
        from opsbook.stores import gcs

        bucket, base = gcs.split_uri(root)
        prefix = "/".join(p for p in (base.strip("/"), rule.prefix.lstrip("/")) if p)
        planned = BucketPlan(rule, root, bucket, prefix, "to set", note=rule.why)
        try:
            current = list(gcs.client().get_bucket(bucket).lifecycle_rules)
            if any(_same(r, planned.gcs_rule) for r in current):
                planned.status = "set"
            cutoff = dt.datetime.combine(as_of, dt.time(), dt.UTC) - dt.timedelta(days=rule.age_days)
            for blob in gcs.client().list_blobs(bucket, prefix=prefix):
                if blob.time_created and blob.time_created < cutoff and blob.storage_class != rule.storage_class:
                    planned.objects += 1
                    planned.bytes += int(blob.size or 0)
        except Exception as exc:  # a bucket that cannot be read is a finding of the plan
            text = str(exc).strip()
            planned.status, planned.note = "error", f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        plans.append(planned)
    return plans


def apply(plans: list[BucketPlan]) -> list[BucketPlan]:
    """Add the missing rules to each bucket (its other rules kept), then read them back."""
    from opsbook.stores import gcs

    for bucket in sorted({p.bucket for p in plans if p.status == "to set"}):
        wanted = [p for p in plans if p.bucket == bucket and p.status == "to set"]
        handle = gcs.client().get_bucket(bucket)
        handle.lifecycle_rules = [*handle.lifecycle_rules, *(p.gcs_rule for p in wanted)]
        handle.patch()
        held = list(gcs.client().get_bucket(bucket).lifecycle_rules)
        for p in wanted:
            if any(_same(r, p.gcs_rule) for r in held):
                p.status = "set"
            else:
                p.status, p.note = "error", "the bucket did not keep the rule (read back without it)"
    return plans

"""The repo-card metadata rules the Hugging Face Hub enforces, for the fake Hub's `/api/validate-yaml` and commits.

Only the fields vital-hub writes are checked, as the Hub's card specifications describe them
(https://huggingface.co/docs/hub/datasets-cards, https://huggingface.co/docs/hub/model-cards and the licence list
at https://huggingface.co/docs/hub/repositories-licenses):
- `license`: a known licence id; `other` also needs `license_name` (an id such as `my-license-1.0`) and
  `license_link` (`LICENSE`, `LICENSE.md` or a URL);
- `size_categories` (datasets): values from the Hub's fixed list;
- `base_model` (models): Hub model ids, never a local path.
"""

from __future__ import annotations

import re

import yaml

LICENSES = frozenset(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
    gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by
    odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3
    llama3.1 llama3.2 llama3.3 llama4 gemma unknown other""".split()
)
SIZE_CATEGORIES = (
    "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B",
    "10B<n<100B", "100B<n<1T", "n>1T",
)  # fmt: skip
LICENSE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")
MODEL_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")


def front_matter(content: str) -> dict | None:
    """The YAML header of a README, {} when it has none, None when it does not parse as a mapping."""
    if not content.startswith("---"):
        return {}
    parts = content.split("\n---", 1)
    try:
        data = yaml.safe_load(parts[0][3:]) if len(parts) == 2 else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else ({} if data is None else None)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def card_errors(content: str, repo_type: str) -> list[str]:
    """What the Hub would reject in a README's metadata ([] when it is accepted)."""
    meta = front_matter(content)
    if meta is None:
        return ["YAML metadata is not a valid mapping"]
    errors = []
    if "license" in meta:
        for licence in _as_list(meta["license"]):
            if licence not in LICENSES:
                errors.append(f'"license" must be one of the Hub\'s licence ids, got {licence!r}')
        if "other" in _as_list(meta["license"]):
            name, link = meta.get("license_name"), meta.get("license_link")
            if not isinstance(name, str) or not LICENSE_NAME.fullmatch(name):
                errors.append('"license_name" is required with license "other" (an id such as my-license-1.0)')
            if not isinstance(link, str) or not (link in ("LICENSE", "LICENSE.md") or link.startswith("https://")):
                errors.append('"license_link" is required with license "other" (LICENSE, LICENSE.md or a URL)')
    if repo_type == "dataset" and "size_categories" in meta:
        for value in _as_list(meta["size_categories"]):
            if value not in SIZE_CATEGORIES:
                errors.append(f'"size_categories" must be one of {list(SIZE_CATEGORIES)}, got {value!r}')
    if repo_type == "model" and "base_model" in meta:
        for value in _as_list(meta["base_model"]):
            if not isinstance(value, str) or not MODEL_ID.fullmatch(value) or ".." in value or "--" in value:
                errors.append(f'"base_model" must be a Hub model id, got {value!r}')
    return errors

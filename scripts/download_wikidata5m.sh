#!/usr/bin/env bash
# Download and unpack Wikidata5m (Wang et al., 2019; https://deepgraphlearning.github.io/project/wikidata5m)
# for the `wikidata5m` KG source: the transductive split (wikidata5m_transductive_train.txt, ...) and
# the alias files (wikidata5m_entity.txt, wikidata5m_relation.txt).
#
# Usage: scripts/download_wikidata5m.sh [DIR]     (default DIR: data/wikidata5m)
# Then set data.kg.source=wikidata5m data.kg.path=DIR.
# Needs internet and about 1.5 GB of disk. Tests never run this script.
set -euo pipefail

DIR="${1:-data/wikidata5m}"
# The dataset's official distribution (links from the project page above).
TRANSDUCTIVE_URL="https://www.dropbox.com/s/6sbhm0rwo4l73jq/wikidata5m_transductive.tar.gz?dl=1"
ALIAS_URL="https://www.dropbox.com/s/lnbhc8yuhit4wm5/wikidata5m_alias.tar.gz?dl=1"

fetch() {  # fetch URL FILE: download to FILE.part, then rename, so an interrupted run leaves no bad FILE
    local url="$1" out="$2"
    if [[ -s "$out" ]]; then
        echo "already downloaded: $out"
        return
    fi
    echo "downloading $out ..."
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 3 -o "$out.part" "$url"
    elif command -v wget >/dev/null 2>&1; then
        wget -O "$out.part" "$url"
    else
        echo "error: need curl or wget to download $out" >&2
        exit 1
    fi
    mv "$out.part" "$out"
}

mkdir -p "$DIR"
cd "$DIR"
fetch "$TRANSDUCTIVE_URL" wikidata5m_transductive.tar.gz
fetch "$ALIAS_URL" wikidata5m_alias.tar.gz
tar -xzf wikidata5m_transductive.tar.gz
tar -xzf wikidata5m_alias.tar.gz

for f in wikidata5m_transductive_train.txt wikidata5m_entity.txt wikidata5m_relation.txt; do
    if [[ ! -s "$f" ]]; then
        echo "error: $f is missing after unpacking in $(pwd); delete the .tar.gz files and rerun" >&2
        exit 1
    fi
done
echo "Wikidata5m is ready in $(pwd); set data.kg.path=$(pwd)"

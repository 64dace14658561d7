#!/usr/bin/env bash
# Builds the test images of crates/image with Debian's own container tools,
# without any registry (the tests run this once and cache the result under
# <cache root>/test-images/<hash of this script>/):
#
#   httpd-oci.tar     busybox httpd, `podman import` + `podman save --format oci-archive`
#   httpd-docker.tar  the same image, `podman save --format docker-archive`
#   httpd-layout/     the same image copied by `skopeo copy` to an OCI layout (tag latest)
#   multi-layout/     umoci: 4 layers (base, whiteout, opaque dir, unpack/modify/repack),
#                     config set with `umoci config` (tag multi)
#   multi-zstd/       multi-layout's image copied by skopeo with zstd layers (tag multi)
#   nginx-oci.tar     nginx and its libraries from Debian packages (`apt-get download`
#                     + `dpkg-deb -x`), `podman import` + `podman save --format oci-archive`
#
# Usage: build-test-images.sh OUT_DIR
# Needs: podman skopeo umoci busybox-static dpkg apt (Debian 12 packages), root.
# Every tool runs with its own roots under a temporary directory, removed on
# exit: podman --root/--runroot/--tmpdir with the vfs driver (no mounts), no
# events log, skopeo with --insecure-policy and its own TMPDIR. The script
# runs in a private mount namespace where /var/lib is read-only and /var/tmp
# is a private directory: containers/image would otherwise create its blob
# cache in /var/lib/containers/cache (with /var/lib read-only it keeps it in
# memory) and podman import stages files in /var/tmp.
set -euo pipefail

if [ -z "${ISOLAB_TEST_IMAGES_NS:-}" ]; then
  ISOLAB_TEST_IMAGES_NS=1 exec unshare --mount --propagation private bash "$0" "$@"
fi

out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/isolab-test-images.XXXXXX")
mkdir -p "$work/var-tmp"
mount --bind "$work/var-tmp" /var/tmp
mount --bind /var/lib /var/lib
mount -o remount,bind,ro /var/lib

podman() {
  command podman --root "$work/podman/root" --runroot "$work/podman/run" \
    --tmpdir "$work/podman/tmp" --storage-driver vfs --events-backend none \
    --cgroup-manager cgroupfs "$@"
}
cleanup() {
  podman rmi --all --force >/dev/null 2>&1 || true
  umount /var/tmp 2>/dev/null || true
  # vfs mounts nothing; make sure of it before removing the tree (the
  # namespace's mounts vanish with it anyway).
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export TMPDIR="$work/tmp"
mkdir -p "$TMPDIR"
skopeo() { command skopeo --insecure-policy "$@"; }

# --- busybox httpd ---------------------------------------------------------
r="$work/httpd"
mkdir -p "$r"/{bin,etc,www,tmp,proc,sys,dev}
chmod 1777 "$r/tmp"
cp /bin/busybox "$r/bin/busybox"
for a in sh httpd cat echo id pwd ls touch sleep env mkdir; do ln -s busybox "$r/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/false\n' >"$r/etc/passwd"
printf 'root:x:0:\nwww:x:33:\n' >"$r/etc/group"
printf '<h1>isolab busybox httpd</h1>\n' >"$r/www/index.html"
printf 'ok\n' >"$r/www/health"
tar -C "$r" --numeric-owner -cf - . | podman import --quiet \
  --change 'CMD ["/bin/httpd", "-f", "-vv", "-p", "80", "-h", "/www"]' \
  --change 'EXPOSE 80/tcp' --change 'ENV GREETING=hello' --change 'WORKDIR /www' \
  - localhost/busybox-httpd:latest >/dev/null
podman save --quiet --format oci-archive -o "$out/httpd-oci.tar" localhost/busybox-httpd:latest
podman save --quiet --format docker-archive -o "$out/httpd-docker.tar" localhost/busybox-httpd:latest
skopeo copy --quiet "oci-archive:$out/httpd-oci.tar" "oci:$out/httpd-layout:latest"

# --- multi-layer image with whiteouts and an opaque directory (umoci) -------
m="$work/multi"
L="$out/multi-layout"
mkdir -p "$m/base"/{bin,etc,data/sub,opt/dir,srv}
cp /bin/busybox "$m/base/bin/busybox"
ln -s busybox "$m/base/bin/sh"
ln -s /bin/busybox "$m/base/bin/abs-link"
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n' >"$m/base/etc/passwd"
printf 'root:x:0:\napp:x:1000:\nextra:x:2000:app\n' >"$m/base/etc/group"
echo keep >"$m/base/data/keep"
echo gone >"$m/base/data/gone"
echo old >"$m/base/data/sub/old"
echo one >"$m/base/opt/old1"
echo deep >"$m/base/opt/dir/deep"
echo secret >"$m/base/srv/private"
chmod 0600 "$m/base/srv/private"
chown 1000:1000 "$m/base/srv" "$m/base/srv/private"
chmod 0750 "$m/base/srv"
printf '#!/bin/sh\necho tool\n' >"$m/base/bin/tool"
chmod 4755 "$m/base/bin/tool"
ln "$m/base/bin/tool" "$m/base/bin/tool-hardlink"
umoci init --layout "$L"
umoci new --image "$L:multi"
umoci insert --image "$L:multi" "$m/base" /
umoci insert --image "$L:multi" --whiteout /data/gone
mkdir -p "$m/newopt/fresh"
echo new >"$m/newopt/fresh/file"
umoci insert --image "$L:multi" --opaque "$m/newopt" /opt
umoci unpack --image "$L:multi" "$m/bundle" >/dev/null
rm "$m/bundle/rootfs/data/sub/old" "$m/bundle/rootfs/bin/abs-link"
echo added >"$m/bundle/rootfs/data/sub/added"
chmod 0700 "$m/bundle/rootfs/data/sub"
ln -s ../data/keep "$m/bundle/rootfs/srv/keep-link"
umoci repack --image "$L:multi" "$m/bundle"
umoci config --image "$L:multi" --config.entrypoint /bin/sh --config.cmd -c \
  --config.cmd 'echo multi' --config.env APP_MODE=test --config.workingdir /srv \
  --config.user app --config.exposedports 8080/tcp --config.exposedports 53/udp
umoci gc --layout "$L"
skopeo copy --quiet --dest-compress-format zstd "oci:$L:multi" "oci:$out/multi-zstd:multi"

# --- nginx and its libraries from Debian packages ---------------------------
debs="$work/debs"
mkdir -p "$debs"
(cd "$debs" && apt-get download -qq nginx nginx-common libc6 libcrypt1 libpcre2-8-0 \
  libssl3 zlib1g 2>/dev/null)
n="$work/nginx"
mkdir -p "$n"
for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$n"; done
# What the packages' maintainer scripts would add, and nothing to start
# the service with: users, run-time directories, our own nginx.conf.
rm -rf "$n/usr/share/doc" "$n/usr/share/man" "$n/usr/share/locale" "$n/usr/share/lintian" \
  "$n/etc/init.d" "$n/etc/logrotate.d" "$n/etc/ufw" "$n/etc/default" \
  "$n/usr/lib/systemd" "$n/lib/systemd"
mkdir -p "$n"/{etc,run,tmp,var/log/nginx,var/lib/nginx,proc,sys,dev}
chmod 1777 "$n/tmp"
printf 'root:x:0:0:root:/root:/bin/false\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n' >"$n/etc/passwd"
printf 'root:x:0:\nwww-data:x:33:\n' >"$n/etc/group"
cat >"$n/etc/nginx/nginx.conf" <<'CONF'
user www-data;
worker_processes 1;
daemon off;
error_log stderr notice;
pid /run/nginx.pid;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    access_log off;
    server {
        listen 80;
        root /usr/share/nginx/html;
        location = /health { return 200 "ok\n"; }
    }
}
CONF
tar -C "$n" --numeric-owner -cf - . | podman import --quiet \
  --change 'CMD ["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"]' \
  --change 'EXPOSE 80/tcp' --change 'STOPSIGNAL SIGQUIT' \
  - localhost/nginx:debian >/dev/null
podman save --quiet --format oci-archive -o "$out/nginx-oci.tar" localhost/nginx:debian

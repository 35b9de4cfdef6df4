# Sourced by scripts/vm/suite (on the host) and scripts/vm/guest-suite (in the guest).
#
# limit_of FILE: a VM test file's time limit in seconds. It is the file's own
# `// vm-timeout: SEC` line (tsc keeps the comment in the compiled file), sized from
# measurements so that a normal run takes at most half of it; 300 for a file without one.
# MESH_VM_FILE_TIMEOUT overrides every file's limit.
limit_of() {
  local l
  l=$(grep -m1 -oE '^// vm-timeout: [0-9]+' "$1" 2>/dev/null)
  l=${l##* }
  echo "${MESH_VM_FILE_TIMEOUT:-${l:-300}}"
}

# Shell checks the guest's /init can run (sourced before each check line of
# /vmtest/checks, so a check line may call these functions or any binary in
# /bin). Each returns 0 when the check passes.

# What the guest looks like: kernel, command line, CPU isolation, IOMMU
# groups, hugepages. Never fails; it is there for the log.
guest_info() {
    echo "kernel:    $(uname -r)"
    echo "cmdline:   $(cat /proc/cmdline)"
    echo "online:    $(cat /sys/devices/system/cpu/online)"
    echo "isolated:  $(cat /sys/devices/system/cpu/isolated)"
    echo "init runs on CPUs $(grep Cpus_allowed_list /proc/1/status | cut -f2)," \
        "this shell on $(grep Cpus_allowed_list /proc/self/status | cut -f2)"
    echo "hugepages: $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages) x 2 MiB"
    echo "IOMMU:     $(ls /sys/class/iommu 2>/dev/null | tr '\n' ' ')"
    for dev in /sys/bus/pci/devices/*; do
        driver=$(readlink "$dev/driver"); driver=${driver##*/}
        group=$(readlink "$dev/iommu_group"); group=${group##*/}
        echo "pci ${dev##*/} class $(cat "$dev/class") $(cat "$dev/vendor"):$(cat "$dev/device")" \
            "driver ${driver:--} group ${group:--}"
    done
    echo "/dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
    return 0
}

# Every NVMe function (class 0x010802) is bound to vfio-pci and its IOMMU
# group has a /dev/vfio/<group> node; at least `$1` (default 1) of them.
vfio_bound() {
    want=${1:-1}
    found=0
    bad=0
    for dev in /sys/bus/pci/devices/*; do
        [ "$(cat "$dev/class")" = 0x010802 ] || continue
        found=$((found + 1))
        bdf=${dev##*/}
        driver=$(readlink "$dev/driver"); driver=${driver##*/}
        group=$(readlink "$dev/iommu_group"); group=${group##*/}
        if [ "$driver" != vfio-pci ]; then
            echo "$bdf: bound to ${driver:-no driver}, not vfio-pci"
            bad=1
        elif [ -z "$group" ]; then
            echo "$bdf: no IOMMU group (is intel_iommu=on on the command line?)"
            bad=1
        elif [ ! -c "/dev/vfio/$group" ]; then
            echo "$bdf: /dev/vfio/$group is missing"
            bad=1
        else
            echo "$bdf: vfio-pci, IOMMU group $group, /dev/vfio/$group present"
        fi
    done
    if [ "$found" -lt "$want" ]; then
        echo "found $found NVMe functions, expected at least $want"
        bad=1
    fi
    [ -c /dev/vfio/vfio ] || { echo "/dev/vfio/vfio is missing"; bad=1; }
    return $bad
}

# Interrupt lines of vfio devices, for the log.
vfio_interrupts() {
    head -1 /proc/interrupts
    grep vfio /proc/interrupts
    return 0
}

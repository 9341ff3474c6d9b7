# tugboot A/B slot selection for U-Boot boards WITHOUT CONFIG_BOOTCOUNT_LIMIT (Debian's
# u-boot-qemu qemu_arm64, most distro U-Boots): this script does the counting U-Boot's
# bootcount/bootlimit/altbootcmd would do, with the environment in a file on the boot partition.
#
# Run by U-Boot's distro boot from the boot partition as boot.scr.uimg (`tugboot installer
# build` wraps it in a legacy script image and prepends `setenv tugboot_cmdline "..."`).
# The boot partition (FAT, partition 1 of the installer's layout) holds:
#   boot.scr.uimg   this script
#   uboot.env       the A/B variables: a U-Boot binary environment with CRC, 512 bytes (what
#                   `env export -c -s 0x200` writes; fw_printenv reads it with the
#                   fw_env.config line `<mount>/uboot.env 0x0 0x200`): one sector, so each
#                   write of it is a single sector write
#   A/vmlinuz, A/initrd.img, B/vmlinuz, B/initrd.img
#                   each slot's kernel and initrd, copied out of the slot's squashfs by the
#                   agent before it arms the slot (U-Boot here cannot read squashfs)
#
# Variables, written by the tugboot agent (agent/src/bootloader/uboot/ab.rs), counted here:
#   tugboot_slot       A|B   the slot to boot (anything else counts as A)
#   upgrade_available  1     a trial of tugboot_slot is pending: count this boot
#   bootcount          0..17 boots counted during the trial (decimal)
#   bootlimit          1..16 boots allowed before falling back
#   altbootcmd               kept as the agent wrote it, not run: its `saveenv` would write the
#                            board's built-in environment store, not this file; the fallback
#                            below does what the agent's altbootcmd says (the other slot,
#                            upgrade_available=0, bootcount=0)
#
# Each counted boot is saved to uboot.env BEFORE the kernel is loaded, so a kernel that hangs
# or panics still uses up a boot. If the count cannot be saved, the trial is not attempted:
# the other (committed) slot boots. An unreadable uboot.env (bad CRC) boots slot A.

setenv tb_part "${devnum}:${distro_bootpart}"
setenv tugboot_slot
setenv upgrade_available
setenv bootcount
setenv bootlimit
setenv altbootcmd
if load ${devtype} ${tb_part} ${kernel_addr_r} uboot.env; then
  if env import -c ${kernel_addr_r} ${filesize} tugboot_slot upgrade_available bootcount bootlimit altbootcmd; then
    echo "tugboot: boot environment uboot.env loaded"
  else
    echo "tugboot: uboot.env is unreadable (CRC), booting slot A"
  fi
fi
if test "${tugboot_slot}" != "B"; then
  setenv tugboot_slot A
fi

if test "${upgrade_available}" = "1"; then
  if test -z "${bootcount}" || test "${bootcount}" = "0"; then setenv bootcount 1
  elif test "${bootcount}" = "1"; then setenv bootcount 2
  elif test "${bootcount}" = "2"; then setenv bootcount 3
  elif test "${bootcount}" = "3"; then setenv bootcount 4
  elif test "${bootcount}" = "4"; then setenv bootcount 5
  elif test "${bootcount}" = "5"; then setenv bootcount 6
  elif test "${bootcount}" = "6"; then setenv bootcount 7
  elif test "${bootcount}" = "7"; then setenv bootcount 8
  elif test "${bootcount}" = "8"; then setenv bootcount 9
  elif test "${bootcount}" = "9"; then setenv bootcount 10
  elif test "${bootcount}" = "10"; then setenv bootcount 11
  elif test "${bootcount}" = "11"; then setenv bootcount 12
  elif test "${bootcount}" = "12"; then setenv bootcount 13
  elif test "${bootcount}" = "13"; then setenv bootcount 14
  elif test "${bootcount}" = "14"; then setenv bootcount 15
  elif test "${bootcount}" = "15"; then setenv bootcount 16
  else setenv bootcount 17
  fi
  echo "tugboot: trial of slot ${tugboot_slot}, boot ${bootcount} of ${bootlimit}"
  if test -n "${bootlimit}" && test "${bootlimit}" != "0" && test ${bootcount} -gt ${bootlimit}; then
    if test "${tugboot_slot}" = "B"; then setenv tugboot_slot A; else setenv tugboot_slot B; fi
    setenv upgrade_available 0
    setenv bootcount 0
    echo "tugboot: trial failed, falling back to slot ${tugboot_slot}"
  fi
  setenv tb_saved 0
  if env export -c -s 0x200 ${kernel_addr_r} tugboot_slot upgrade_available bootcount bootlimit altbootcmd; then
    if fatwrite ${devtype} ${tb_part} ${kernel_addr_r} uboot.env 0x200; then
      setenv tb_saved 1
    fi
  fi
  if test "${tb_saved}" != "1" && test "${upgrade_available}" = "1"; then
    if test "${tugboot_slot}" = "B"; then setenv tugboot_slot A; else setenv tugboot_slot B; fi
    echo "tugboot: cannot save the boot count, not trying; booting slot ${tugboot_slot}"
  fi
fi

echo "tugboot: booting slot ${tugboot_slot}"
setenv bootargs "tugboot.slot=${tugboot_slot} ${tugboot_cmdline}"
if load ${devtype} ${tb_part} ${kernel_addr_r} ${tugboot_slot}/vmlinuz; then
  if load ${devtype} ${tb_part} ${ramdisk_addr_r} ${tugboot_slot}/initrd.img; then
    booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
  else
    booti ${kernel_addr_r} - ${fdtcontroladdr}
  fi
fi
echo "tugboot: slot ${tugboot_slot} did not boot (no ${tugboot_slot}/vmlinuz on the boot partition?)"

//! The TFTP server's generated files: whatever `tugboot_fleet::netboot` answers for a path (GRUB,
//! PXELINUX and U-Boot configurations, Raspberry Pi trees, published artifacts), from the live
//! fleet and what DHCP observed. This is only the shell: files from the blob store and the
//! Raspberry Pi firmware directory, and "who booted what".

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tugboot_firmware::BlobStore;
use tugboot_fleet::netboot::{self, Answer, LoaderFile};
use tugboot_fleet::{BootPlan, Live};
use tugboot_tftp::{FileProvider, Provided};

/// Told about every boot decided by a loader configuration.
pub type BootSink = Arc<dyn Fn(&BootPlan) + Send + Sync>;

/// The TFTP server's [`FileProvider`].
pub struct NetbootFiles {
    live: Arc<Live>,
    blobs: BlobStore,
    /// The operator's Raspberry Pi boot firmware (start4.elf, fixup4.dat, overlays/, ...).
    rpi_firmware: Option<PathBuf>,
    retry_secs: u32,
    on_boot: Option<BootSink>,
}

impl std::fmt::Debug for NetbootFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetbootFiles")
            .field("rpi_firmware", &self.rpi_firmware)
            .field("retry_secs", &self.retry_secs)
            .finish_non_exhaustive()
    }
}

impl NetbootFiles {
    #[must_use]
    pub fn new(
        live: Arc<Live>,
        blobs: BlobStore,
        rpi_firmware: Option<PathBuf>,
        retry_secs: u32,
        on_boot: Option<BootSink>,
    ) -> Self {
        Self {
            live,
            blobs,
            rpi_firmware,
            retry_secs,
            on_boot,
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }
}

impl FileProvider for NetbootFiles {
    fn lookup(&self, peer: SocketAddr, path: &str) -> Option<Provided> {
        let file = netboot::classify(path)?;
        let fleet = self.live.snapshot();
        let now = Self::now();
        let peer_v4 = match peer.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        let (answer, plan) = self.live.with_observations_read(|observations| {
            netboot::answer(
                &fleet,
                &netboot::Context {
                    observations,
                    peer: peer_v4,
                    now,
                    retry_secs: self.retry_secs,
                },
                &file,
            )
        });
        if let Some(plan) = &plan {
            match plan {
                Ok(p) => {
                    tracing::info!(%peer, path, plan = %p.comment(), "tftp: loader configuration");
                    if let Some(sink) = &self.on_boot {
                        sink(p);
                    }
                }
                Err(e) => tracing::warn!(%peer, path, reason = %e, "tftp: cannot boot"),
            }
        }
        match answer {
            Answer::Text(text) => Some(Provided::from(text)),
            Answer::Bytes(bytes) => Some(Provided::generated(bytes)),
            // Streamed by the TFTP server off the runtime, only if the blob still has the
            // published size.
            Answer::Artifact { digest, size } => {
                Some(Provided::file(self.blobs.path(&digest), size))
            }
            Answer::Firmware(name) => {
                let Some(dir) = &self.rpi_firmware else {
                    tracing::debug!(%peer, path, "no tftp.rpi_firmware directory: firmware file not served");
                    return None;
                };
                // `name` is checked (`[A-Za-z0-9._+-]` components, no dot-files, at most
                // `overlays/<file>`); the size is whatever the file has now (one stat).
                let path = dir.join(&name);
                let size = std::fs::metadata(&path).ok().filter(|m| m.is_file())?.len();
                Some(Provided::file(path, size))
            }
            Answer::NotFound => {
                if matches!(file, LoaderFile::Artifact(_)) {
                    tracing::debug!(%peer, path, "artifact not published");
                }
                None
            }
        }
    }
}

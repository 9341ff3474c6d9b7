//! SQL shared by both backends and the macro that implements [`crate::Store`] on top of it.
//!
//! SQLite and PostgreSQL both accept `$n` placeholders, `INSERT ... ON CONFLICT`,
//! `UPDATE ... RETURNING` and recursive CTEs, so every statement but one is the same text for
//! both. The exception is taking a free lease, where PostgreSQL adds `FOR UPDATE SKIP LOCKED`
//! (SQLite has a single writer and needs no row locks); each backend passes its own statement.

macro_rules! machine_cols {
    () => {
        "id, mac, smbios_uuid, serial, board, profile, labels, state, first_seen, last_seen, last_booted_image"
    };
}
macro_rules! lease_cols {
    () => {
        "pool, addr, client_id, mac, hostname, state, expires_at, updated_at"
    };
}
macro_rules! image_cols {
    () => {
        "name, version, manifest_digest, manifest, published, created_at"
    };
}
macro_rules! rollout_cols {
    () => {
        "id, image_name, image_version, group_selector, stages, thresholds, state, current_stage, created_at, updated_at"
    };
}
macro_rules! report_cols {
    () => {
        "device_id, report_id, boot_id, slot, image_version, checks, uptime_secs, last_error, received_at"
    };
}
macro_rules! cert_cols {
    () => {
        "serial, device_id, issued_at, not_after, revoked_at"
    };
}

/// An address may be taken by a new client when it is free or released, or when whatever hold
/// it had (offer, lease, decline quarantine) has expired. `$n` is the `now` parameter.
macro_rules! claimable {
    ($now:literal) => {
        concat!(
            "(state IN ('free', 'released') OR expires_at <= ",
            $now,
            ")"
        )
    };
}

/// Takes the best free address of pool `$1` for client `$2` (mac `$3`, hostname `$4`) in state
/// `$5` until `$6`, at `now` = `$7`. The inner SELECT picks addresses nobody had before, then
/// the longest-expired; the outer WHERE re-checks the condition on the row actually updated.
/// `$lock` is empty for SQLite and `FOR UPDATE SKIP LOCKED` for PostgreSQL.
macro_rules! claim_any_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE leases SET client_id = $2, mac = $3, hostname = $4, state = $5, expires_at = $6, updated_at = $7 ",
            "WHERE pool = $1 AND ",
            claimable!("$7"),
            " AND addr = (SELECT addr FROM leases WHERE pool = $1 AND ",
            claimable!("$7"),
            " ORDER BY (client_id IS NOT NULL), expires_at, addr LIMIT 1 ",
            $lock,
            ") RETURNING ",
            lease_cols!()
        )
    };
}

/// Takes the lowest never-used address (the partial index `leases_unused`), same parameters as
/// [`claim_any_sql`]. Tried first: while a pool has never-used addresses this is one index
/// probe, where [`claim_any_sql`] sorts every candidate row of the pool.
macro_rules! claim_unused_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE leases SET client_id = $2, mac = $3, hostname = $4, state = $5, expires_at = $6, updated_at = $7 ",
            "WHERE pool = $1 AND state = 'free' AND client_id IS NULL AND addr = (SELECT addr FROM leases ",
            "WHERE pool = $1 AND state = 'free' AND client_id IS NULL ORDER BY addr LIMIT 1 ",
            $lock,
            ") RETURNING ",
            lease_cols!()
        )
    };
}

/// Implements [`crate::Store`] for a backend type that has `reader()` and `writer()` returning
/// its sqlx pools, given its row type and the row-lock clause of its lease-claiming statements
/// (see [`claim_any_sql`]).
macro_rules! impl_store {
    ($ty:ty, row = $row:ty, lock = $lock:literal) => {
        impl $crate::Store for $ty {
            async fn record_sighting(
                &self,
                sighting: &$crate::MachineSighting,
                now: i64,
            ) -> Result<$crate::Machine, $crate::StoreError> {
                sighting.validate()?;
                let row = sqlx::query(concat!(
                    "INSERT INTO machines (mac, smbios_uuid, serial, board, state, first_seen, last_seen) ",
                    "VALUES ($1, $2, $3, $4, 'unknown', $5, $5) ",
                    "ON CONFLICT (mac) DO UPDATE SET ",
                    "smbios_uuid = COALESCE(excluded.smbios_uuid, machines.smbios_uuid), ",
                    "serial = COALESCE(excluded.serial, machines.serial), ",
                    "board = COALESCE(excluded.board, machines.board), ",
                    "last_seen = CASE WHEN excluded.last_seen > machines.last_seen ",
                    "THEN excluded.last_seen ELSE machines.last_seen END ",
                    "RETURNING ",
                    machine_cols!()
                ))
                .bind(sighting.mac.to_string())
                .bind(sighting.smbios_uuid.as_deref())
                .bind(sighting.serial.as_deref())
                .bind(sighting.board.as_deref())
                .bind(now)
                .fetch_one(self.writer())
                .await
                .map_err($crate::StoreError::backend("record_sighting"))?;
                $crate::rows::machine(&row)
            }

            async fn get_machine(
                &self,
                id: $crate::MachineId,
            ) -> Result<Option<$crate::Machine>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", machine_cols!(), " FROM machines WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("get_machine"))?
                    .map(|r| $crate::rows::machine(&r))
                    .transpose()
            }

            async fn find_machine_by_mac(
                &self,
                mac: $crate::MacAddr,
            ) -> Result<Option<$crate::Machine>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", machine_cols!(), " FROM machines WHERE mac = $1"))
                    .bind(mac.to_string())
                    .fetch_optional(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("find_machine_by_mac"))?
                    .map(|r| $crate::rows::machine(&r))
                    .transpose()
            }

            async fn find_machine_by_serial(
                &self,
                serial: &str,
            ) -> Result<Option<$crate::Machine>, $crate::StoreError> {
                sqlx::query(concat!(
                    "SELECT ",
                    machine_cols!(),
                    " FROM machines WHERE serial = $1 ORDER BY id LIMIT 1"
                ))
                .bind(serial)
                .fetch_optional(self.reader())
                .await
                .map_err($crate::StoreError::backend("find_machine_by_serial"))?
                .map(|r| $crate::rows::machine(&r))
                .transpose()
            }

            async fn list_machines(&self) -> Result<Vec<$crate::Machine>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", machine_cols!(), " FROM machines ORDER BY id"))
                    .fetch_all(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("list_machines"))?
                    .iter()
                    .map($crate::rows::machine)
                    .collect()
            }

            async fn set_machine_state(
                &self,
                id: $crate::MachineId,
                state: $crate::MachineState,
            ) -> Result<$crate::Machine, $crate::StoreError> {
                let row = sqlx::query(concat!(
                    "UPDATE machines SET state = $2 WHERE id = $1 RETURNING ",
                    machine_cols!()
                ))
                .bind(id.0)
                .bind(state.as_str())
                .fetch_optional(self.writer())
                .await
                .map_err($crate::StoreError::backend("set_machine_state"))?;
                let row = row.ok_or_else(|| $crate::StoreError::NotFound { entity: "machine", key: id.to_string() })?;
                $crate::rows::machine(&row)
            }

            async fn assign_machine(
                &self,
                id: $crate::MachineId,
                board: Option<&str>,
                profile: Option<&str>,
                labels: &std::collections::BTreeMap<String, String>,
            ) -> Result<$crate::Machine, $crate::StoreError> {
                $crate::model::check_opt_len("board", board, $crate::MAX_NAME_LEN)?;
                $crate::model::check_opt_len("profile", profile, $crate::MAX_NAME_LEN)?;
                let labels = $crate::model::labels_to_db(labels)?;
                let row = sqlx::query(concat!(
                    "UPDATE machines SET board = $2, profile = $3, labels = $4 WHERE id = $1 RETURNING ",
                    machine_cols!()
                ))
                .bind(id.0)
                .bind(board)
                .bind(profile)
                .bind(labels)
                .fetch_optional(self.writer())
                .await
                .map_err($crate::StoreError::backend("assign_machine"))?;
                let row = row.ok_or_else(|| $crate::StoreError::NotFound { entity: "machine", key: id.to_string() })?;
                $crate::rows::machine(&row)
            }

            async fn record_boot(
                &self,
                id: $crate::MachineId,
                image: &str,
                now: i64,
            ) -> Result<$crate::Machine, $crate::StoreError> {
                $crate::model::check_len("image", image, 2 * $crate::MAX_NAME_LEN)?;
                let row = sqlx::query(concat!(
                    "UPDATE machines SET last_booted_image = $2, ",
                    "last_seen = CASE WHEN $3 > last_seen THEN $3 ELSE last_seen END ",
                    "WHERE id = $1 RETURNING ",
                    machine_cols!()
                ))
                .bind(id.0)
                .bind(image)
                .bind(now)
                .fetch_optional(self.writer())
                .await
                .map_err($crate::StoreError::backend("record_boot"))?;
                let row = row.ok_or_else(|| $crate::StoreError::NotFound { entity: "machine", key: id.to_string() })?;
                $crate::rows::machine(&row)
            }

            async fn delete_machine(&self, id: $crate::MachineId) -> Result<bool, $crate::StoreError> {
                let done = sqlx::query("DELETE FROM machines WHERE id = $1")
                    .bind(id.0)
                    .execute(self.writer())
                    .await
                    .map_err($crate::StoreError::backend("delete_machine"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn add_pool(&self, pool: &$crate::LeasePool, now: i64) -> Result<u64, $crate::StoreError> {
                pool.validated_size()?;
                let (first, last) = ($crate::model::addr_to_db(pool.first), $crate::model::addr_to_db(pool.last));
                let mut tx = self.writer().begin().await.map_err($crate::StoreError::backend("add_pool"))?;
                sqlx::query(
                    "INSERT INTO lease_pools (name, first_addr, last_addr) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&pool.name)
                .bind(first)
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err($crate::StoreError::backend("add_pool"))?;
                let (have_first, have_last): (i64, i64) =
                    sqlx::query_as("SELECT first_addr, last_addr FROM lease_pools WHERE name = $1")
                        .bind(&pool.name)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err($crate::StoreError::backend("add_pool"))?;
                if (have_first, have_last) != (first, last) {
                    return Err($crate::StoreError::AlreadyExists {
                        entity: "lease pool with another range",
                        key: pool.name.clone(),
                    });
                }
                let added = sqlx::query(concat!(
                    "WITH RECURSIVE r(a) AS (SELECT CAST($2 AS BIGINT) UNION ALL SELECT a + 1 FROM r WHERE a < $3) ",
                    "INSERT INTO leases (pool, addr, state, expires_at, updated_at) ",
                    "SELECT $1, a, 'free', 0, $4 FROM r WHERE true ON CONFLICT (pool, addr) DO NOTHING"
                ))
                .bind(&pool.name)
                .bind(first)
                .bind(last)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err($crate::StoreError::backend("add_pool"))?
                .rows_affected();
                tx.commit().await.map_err($crate::StoreError::backend("add_pool"))?;
                Ok(added)
            }

            async fn allocate_lease(
                &self,
                request: &$crate::LeaseRequest,
                now: i64,
            ) -> Result<Option<$crate::Lease>, $crate::StoreError> {
                request.validate()?;
                let client = &request.client;
                let mac = client.mac.to_string();
                // Each step is one atomic statement. A unique violation on (pool, client_id)
                // means the same client won an address concurrently (another server, a
                // retransmission): start over, and step 1 will find that address.
                for _ in 0..4 {
                    // 1. The client's own address.
                    let row = sqlx::query(concat!(
                        "UPDATE leases SET mac = $3, hostname = $4, state = $5, expires_at = $6, updated_at = $7 ",
                        "WHERE pool = $1 AND client_id = $2 RETURNING ",
                        lease_cols!()
                    ))
                    .bind(&request.pool)
                    .bind(&client.client_id)
                    .bind(&mac)
                    .bind(client.hostname.as_deref())
                    .bind(request.state.as_str())
                    .bind(request.expires_at)
                    .bind(now)
                    .fetch_optional(self.writer())
                    .await
                    .map_err($crate::StoreError::backend("allocate_lease"))?;
                    if let Some(row) = row {
                        return $crate::rows::lease(&row).map(Some);
                    }
                    // 2. The address the client asked for, if it can be taken.
                    if let Some(addr) = request.requested {
                        match self.claim_specific(&request.pool, addr, client, &mac, request.state, request.expires_at, now).await {
                            Ok(Some(row)) => return $crate::rows::lease(&row).map(Some),
                            Ok(None) => {}
                            Err(e) if $crate::error::is_unique_violation(&e) => continue,
                            Err(e) => return Err($crate::StoreError::Backend { op: "allocate_lease", source: e }),
                        }
                    }
                    // 3. A never-used address, else the best other free one.
                    let mut raced = false;
                    for sql in [claim_unused_sql!($lock), claim_any_sql!($lock)] {
                        let taken = sqlx::query(sql)
                            .bind(&request.pool)
                            .bind(&client.client_id)
                            .bind(&mac)
                            .bind(client.hostname.as_deref())
                            .bind(request.state.as_str())
                            .bind(request.expires_at)
                            .bind(now)
                            .fetch_optional(self.writer())
                            .await;
                        match taken {
                            Ok(Some(row)) => return $crate::rows::lease(&row).map(Some),
                            Ok(None) => {}
                            Err(e) if $crate::error::is_unique_violation(&e) => {
                                raced = true;
                                break;
                            }
                            Err(e) => return Err($crate::StoreError::Backend { op: "allocate_lease", source: e }),
                        }
                    }
                    if !raced {
                        return Ok(None);
                    }
                }
                Err($crate::StoreError::LeaseContention { pool: request.pool.clone() })
            }

            async fn claim_lease(
                &self,
                pool: &str,
                addr: std::net::Ipv4Addr,
                client: &$crate::LeaseClient,
                state: $crate::LeaseState,
                expires_at: i64,
                now: i64,
            ) -> Result<Option<$crate::Lease>, $crate::StoreError> {
                $crate::model::check_len("pool name", pool, $crate::MAX_NAME_LEN)?;
                client.validate()?;
                if !matches!(state, $crate::LeaseState::Offered | $crate::LeaseState::Bound) {
                    return Err($crate::StoreError::invalid("lease state", format!("cannot claim as {state}")));
                }
                let mac = client.mac.to_string();
                match self.claim_specific(pool, addr, client, &mac, state, expires_at, now).await {
                    Ok(row) => return row.map(|r| $crate::rows::lease(&r)).transpose(),
                    Err(e) if $crate::error::is_unique_violation(&e) => {}
                    Err(e) => return Err($crate::StoreError::Backend { op: "claim_lease", source: e }),
                }
                // The client holds another address of this pool and asks for this one: give
                // the other back, then try once more.
                sqlx::query(concat!(
                    "UPDATE leases SET client_id = NULL, mac = NULL, hostname = NULL, state = 'free', ",
                    "expires_at = 0, updated_at = $3 WHERE pool = $1 AND client_id = $2"
                ))
                .bind(pool)
                .bind(&client.client_id)
                .bind(now)
                .execute(self.writer())
                .await
                .map_err($crate::StoreError::backend("claim_lease"))?;
                self.claim_specific(pool, addr, client, &mac, state, expires_at, now)
                    .await
                    .map_err(|source| $crate::StoreError::Backend { op: "claim_lease", source })?
                    .map(|r| $crate::rows::lease(&r))
                    .transpose()
            }

            async fn release_lease(
                &self,
                pool: &str,
                addr: std::net::Ipv4Addr,
                client_id: &[u8],
                now: i64,
            ) -> Result<bool, $crate::StoreError> {
                let done = sqlx::query(concat!(
                    "UPDATE leases SET state = 'released', expires_at = $4, updated_at = $4 ",
                    "WHERE pool = $1 AND addr = $2 AND client_id = $3 AND state IN ('offered', 'bound')"
                ))
                .bind(pool)
                .bind($crate::model::addr_to_db(addr))
                .bind(client_id)
                .bind(now)
                .execute(self.writer())
                .await
                .map_err($crate::StoreError::backend("release_lease"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn decline_lease(
                &self,
                pool: &str,
                addr: std::net::Ipv4Addr,
                client_id: &[u8],
                until: i64,
                now: i64,
            ) -> Result<bool, $crate::StoreError> {
                let done = sqlx::query(concat!(
                    "UPDATE leases SET state = 'declined', client_id = NULL, mac = NULL, hostname = NULL, ",
                    "expires_at = $4, updated_at = $5 WHERE pool = $1 AND addr = $2 AND client_id = $3"
                ))
                .bind(pool)
                .bind($crate::model::addr_to_db(addr))
                .bind(client_id)
                .bind(until)
                .bind(now)
                .execute(self.writer())
                .await
                .map_err($crate::StoreError::backend("decline_lease"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn get_lease(
                &self,
                pool: &str,
                addr: std::net::Ipv4Addr,
            ) -> Result<Option<$crate::Lease>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", lease_cols!(), " FROM leases WHERE pool = $1 AND addr = $2"))
                    .bind(pool)
                    .bind($crate::model::addr_to_db(addr))
                    .fetch_optional(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("get_lease"))?
                    .map(|r| $crate::rows::lease(&r))
                    .transpose()
            }

            async fn list_active_leases(&self, pool: &str, now: i64) -> Result<Vec<$crate::Lease>, $crate::StoreError> {
                sqlx::query(concat!(
                    "SELECT ",
                    lease_cols!(),
                    " FROM leases WHERE pool = $1 AND state IN ('offered', 'bound') AND expires_at > $2 ORDER BY addr"
                ))
                .bind(pool)
                .bind(now)
                .fetch_all(self.reader())
                .await
                .map_err($crate::StoreError::backend("list_active_leases"))?
                .iter()
                .map($crate::rows::lease)
                .collect()
            }

            async fn put_image(&self, image: &$crate::Image) -> Result<$crate::WriteOutcome, $crate::StoreError> {
                image.validate()?;
                let version = $crate::model::u64_to_db("image version", image.version)?;
                let done = sqlx::query(concat!(
                    "INSERT INTO images (",
                    image_cols!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, version) DO NOTHING"
                ))
                .bind(&image.name)
                .bind(version)
                .bind(&image.manifest_digest)
                .bind(&image.manifest)
                .bind(image.published)
                .bind(image.created_at)
                .execute(self.writer())
                .await
                .map_err($crate::StoreError::backend("put_image"))?;
                if done.rows_affected() > 0 {
                    return Ok($crate::WriteOutcome::Inserted);
                }
                // The writer pool, so we read what the conflicting insert committed.
                let row = sqlx::query(concat!("SELECT ", image_cols!(), " FROM images WHERE name = $1 AND version = $2"))
                    .bind(&image.name)
                    .bind(version)
                    .fetch_one(self.writer())
                    .await
                    .map_err($crate::StoreError::backend("put_image"))?;
                let existing = $crate::rows::image(&row)?;
                if existing.manifest_digest == image.manifest_digest && existing.manifest == image.manifest {
                    Ok($crate::WriteOutcome::AlreadyPresent)
                } else {
                    Err($crate::StoreError::ImageImmutable { name: image.name.clone(), version: image.version })
                }
            }

            async fn get_image(&self, name: &str, version: u64) -> Result<Option<$crate::Image>, $crate::StoreError> {
                let Ok(version) = i64::try_from(version) else { return Ok(None) };
                sqlx::query(concat!("SELECT ", image_cols!(), " FROM images WHERE name = $1 AND version = $2"))
                    .bind(name)
                    .bind(version)
                    .fetch_optional(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("get_image"))?
                    .map(|r| $crate::rows::image(&r))
                    .transpose()
            }

            async fn list_images(&self, name: &str) -> Result<Vec<$crate::Image>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", image_cols!(), " FROM images WHERE name = $1 ORDER BY version"))
                    .bind(name)
                    .fetch_all(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("list_images"))?
                    .iter()
                    .map($crate::rows::image)
                    .collect()
            }

            async fn set_image_published(&self, name: &str, version: u64, published: bool) -> Result<bool, $crate::StoreError> {
                let Ok(version) = i64::try_from(version) else { return Ok(false) };
                let done = sqlx::query("UPDATE images SET published = $3 WHERE name = $1 AND version = $2")
                    .bind(name)
                    .bind(version)
                    .bind(published)
                    .execute(self.writer())
                    .await
                    .map_err($crate::StoreError::backend("set_image_published"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn create_rollout(&self, rollout: &$crate::NewRollout, now: i64) -> Result<$crate::Rollout, $crate::StoreError> {
                rollout.validate()?;
                let stages = serde_json::to_string(&rollout.stages).map_err(|e| $crate::StoreError::invalid("stages", e.to_string()))?;
                let thresholds =
                    serde_json::to_string(&rollout.thresholds).map_err(|e| $crate::StoreError::invalid("thresholds", e.to_string()))?;
                let version = $crate::model::u64_to_db("image version", rollout.image_version)?;
                let row = sqlx::query(concat!(
                    "INSERT INTO rollouts (image_name, image_version, group_selector, stages, thresholds, state, ",
                    "current_stage, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) RETURNING ",
                    rollout_cols!()
                ))
                .bind(&rollout.image_name)
                .bind(version)
                .bind(&rollout.group_selector)
                .bind(stages)
                .bind(thresholds)
                .bind(now)
                .fetch_one(self.writer())
                .await
                .map_err(|e| {
                    if $crate::error::is_foreign_key_violation(&e) {
                        $crate::StoreError::NotFound {
                            entity: "image",
                            key: format!("{}@{}", rollout.image_name, rollout.image_version),
                        }
                    } else {
                        $crate::StoreError::Backend { op: "create_rollout", source: e }
                    }
                })?;
                $crate::rows::rollout(&row)
            }

            async fn get_rollout(&self, id: $crate::RolloutId) -> Result<Option<$crate::Rollout>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", rollout_cols!(), " FROM rollouts WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("get_rollout"))?
                    .map(|r| $crate::rows::rollout(&r))
                    .transpose()
            }

            async fn list_rollouts(&self) -> Result<Vec<$crate::Rollout>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", rollout_cols!(), " FROM rollouts ORDER BY id"))
                    .fetch_all(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("list_rollouts"))?
                    .iter()
                    .map($crate::rows::rollout)
                    .collect()
            }

            async fn transition_rollout(
                &self,
                t: &$crate::RolloutTransition,
                now: i64,
            ) -> Result<Option<$crate::Rollout>, $crate::StoreError> {
                let current = $crate::Store::get_rollout(self, t.id)
                    .await?
                    .ok_or_else(|| $crate::StoreError::NotFound { entity: "rollout", key: t.id.to_string() })?;
                if usize::try_from(t.to_stage).map_or(true, |s| s >= current.stages.len()) {
                    return Err($crate::StoreError::invalid(
                        "to_stage",
                        format!("{} but the rollout has {} stages", t.to_stage, current.stages.len()),
                    ));
                }
                let row = sqlx::query(concat!(
                    "UPDATE rollouts SET state = $4, current_stage = $5, updated_at = $6 ",
                    "WHERE id = $1 AND state = $2 AND current_stage = $3 RETURNING ",
                    rollout_cols!()
                ))
                .bind(t.id.0)
                .bind(t.from_state.as_str())
                .bind(i64::from(t.from_stage))
                .bind(t.to_state.as_str())
                .bind(i64::from(t.to_stage))
                .bind(now)
                .fetch_optional(self.writer())
                .await
                .map_err($crate::StoreError::backend("transition_rollout"))?;
                row.map(|r| $crate::rows::rollout(&r)).transpose()
            }

            async fn insert_report(&self, report: &$crate::Report) -> Result<$crate::WriteOutcome, $crate::StoreError> {
                let checks = report.checks_to_db()?;
                let done = sqlx::query(concat!(
                    "INSERT INTO reports (",
                    report_cols!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (device_id, report_id) DO NOTHING"
                ))
                .bind(report.device.0)
                .bind(&report.report_id)
                .bind(&report.boot_id)
                .bind(report.slot.as_str())
                .bind($crate::model::u64_to_db("image_version", report.image_version)?)
                .bind(checks)
                .bind($crate::model::u64_to_db("uptime_secs", report.uptime_secs)?)
                .bind(report.last_error.as_deref())
                .bind(report.received_at)
                .execute(self.writer())
                .await
                .map_err(|e| {
                    if $crate::error::is_foreign_key_violation(&e) {
                        $crate::StoreError::NotFound { entity: "device", key: report.device.to_string() }
                    } else {
                        $crate::StoreError::Backend { op: "insert_report", source: e }
                    }
                })?;
                Ok(if done.rows_affected() > 0 {
                    $crate::WriteOutcome::Inserted
                } else {
                    $crate::WriteOutcome::AlreadyPresent
                })
            }

            async fn get_report(
                &self,
                device: $crate::MachineId,
                report_id: &str,
            ) -> Result<Option<$crate::Report>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", report_cols!(), " FROM reports WHERE device_id = $1 AND report_id = $2"))
                    .bind(device.0)
                    .bind(report_id)
                    .fetch_optional(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("get_report"))?
                    .map(|r| $crate::rows::report(&r))
                    .transpose()
            }

            async fn list_reports(&self, device: $crate::MachineId, limit: u32) -> Result<Vec<$crate::Report>, $crate::StoreError> {
                sqlx::query(concat!(
                    "SELECT ",
                    report_cols!(),
                    " FROM reports WHERE device_id = $1 ORDER BY received_at DESC, report_id DESC LIMIT $2"
                ))
                .bind(device.0)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await
                .map_err($crate::StoreError::backend("list_reports"))?
                .iter()
                .map($crate::rows::report)
                .collect()
            }

            async fn count_reports(&self) -> Result<u64, $crate::StoreError> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM reports")
                    .fetch_one(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("count_reports"))?;
                $crate::model::u64_from_db("reports", "count", n)
            }

            async fn insert_device_cert(&self, cert: &$crate::DeviceCert) -> Result<(), $crate::StoreError> {
                cert.validate()?;
                sqlx::query(concat!("INSERT INTO device_certs (", cert_cols!(), ") VALUES ($1, $2, $3, $4, $5)"))
                    .bind(&cert.serial)
                    .bind(cert.device.0)
                    .bind(cert.issued_at)
                    .bind(cert.not_after)
                    .bind(cert.revoked_at)
                    .execute(self.writer())
                    .await
                    .map_err(|e| {
                        if $crate::error::is_unique_violation(&e) {
                            $crate::StoreError::AlreadyExists { entity: "device certificate", key: cert.serial.clone() }
                        } else if $crate::error::is_foreign_key_violation(&e) {
                            $crate::StoreError::NotFound { entity: "device", key: cert.device.to_string() }
                        } else {
                            $crate::StoreError::Backend { op: "insert_device_cert", source: e }
                        }
                    })?;
                Ok(())
            }

            async fn get_device_cert(&self, serial: &str) -> Result<Option<$crate::DeviceCert>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", cert_cols!(), " FROM device_certs WHERE serial = $1"))
                    .bind(serial)
                    .fetch_optional(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("get_device_cert"))?
                    .map(|r| $crate::rows::cert(&r))
                    .transpose()
            }

            async fn list_device_certs(&self, device: $crate::MachineId) -> Result<Vec<$crate::DeviceCert>, $crate::StoreError> {
                sqlx::query(concat!(
                    "SELECT ",
                    cert_cols!(),
                    " FROM device_certs WHERE device_id = $1 ORDER BY issued_at, serial"
                ))
                .bind(device.0)
                .fetch_all(self.reader())
                .await
                .map_err($crate::StoreError::backend("list_device_certs"))?
                .iter()
                .map($crate::rows::cert)
                .collect()
            }

            async fn revoke_device_cert(&self, serial: &str, now: i64) -> Result<$crate::DeviceCert, $crate::StoreError> {
                let row = sqlx::query(concat!(
                    "UPDATE device_certs SET revoked_at = COALESCE(revoked_at, $2) WHERE serial = $1 RETURNING ",
                    cert_cols!()
                ))
                .bind(serial)
                .bind(now)
                .fetch_optional(self.writer())
                .await
                .map_err($crate::StoreError::backend("revoke_device_cert"))?;
                let row = row.ok_or_else(|| $crate::StoreError::NotFound { entity: "device certificate", key: serial.to_owned() })?;
                $crate::rows::cert(&row)
            }
        }

        impl $ty {
            /// Holds `addr` for `client` if it is the client's or can be taken, returning the
            /// updated row. Returns the raw driver error so callers can recognise a unique
            /// violation on the client.
            #[allow(clippy::too_many_arguments)]
            async fn claim_specific(
                &self,
                pool: &str,
                addr: std::net::Ipv4Addr,
                client: &$crate::LeaseClient,
                mac: &str,
                state: $crate::LeaseState,
                expires_at: i64,
                now: i64,
            ) -> Result<Option<$row>, sqlx::Error> {
                sqlx::query(concat!(
                    "UPDATE leases SET client_id = $3, mac = $4, hostname = $5, state = $6, expires_at = $7, updated_at = $8 ",
                    "WHERE pool = $1 AND addr = $2 AND (client_id = $3 OR ",
                    claimable!("$8"),
                    ") RETURNING ",
                    lease_cols!()
                ))
                .bind(pool)
                .bind($crate::model::addr_to_db(addr))
                .bind(&client.client_id)
                .bind(mac)
                .bind(client.hostname.as_deref())
                .bind(state.as_str())
                .bind(expires_at)
                .bind(now)
                .fetch_optional(self.writer())
                .await
            }
        }
    };
}

//! SQL shared by both backends and the macro that implements [`crate::Store`] on top of it.
//!
//! SQLite and PostgreSQL both accept `$n` placeholders, `INSERT ... ON CONFLICT ... DO UPDATE
//! ... WHERE`, `UPDATE ... RETURNING` and correlated subqueries, so every statement is the same
//! text for both.

macro_rules! machine_cols {
    () => {
        "id, name, mac, smbios_uuid, serial, state, first_seen, last_seen, last_booted_image"
    };
}
macro_rules! fact_cols {
    () => {
        "machine_id, key, value, source, at"
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
        "device_id, report_id, boot_id, slot, image_version, checks, uptime_secs, last_error, received_at, outcome, outcome_name, outcome_version"
    };
}
macro_rules! cert_cols {
    () => {
        "serial, device_id, issued_at, not_after, revoked_at"
    };
}

/// What makes an offered fact replace the stored one (see [`OFFER_FACT`]).
macro_rules! fact_upsert_rule {
    () => {
        concat!(
            "ON CONFLICT (machine_id, key) DO UPDATE SET value = excluded.value, source = excluded.source, ",
            "rank = excluded.rank, at = excluded.at ",
            "WHERE excluded.rank > machine_facts.rank OR ",
            "(excluded.rank = machine_facts.rank AND excluded.at >= machine_facts.at AND ",
            "(excluded.value <> machine_facts.value OR excluded.source <> machine_facts.source OR ",
            "excluded.at >= machine_facts.at + 60))"
        )
    };
}

/// Offers one fact: `$1` machine, `$2` key, `$3` value, `$4` source, `$5` rank, `$6` at. The
/// authority rule of `tugboot_fleet::facts` in SQL: the stored fact is replaced only by one of
/// higher rank, or of equal rank stated no earlier. Several servers writing at once keep it.
///
/// The same value from the same source only refreshes `at` once [`crate::REFRESH_SECS`] have
/// passed: a machine seen by DHCP, TFTP and HTTP a dozen times during one boot writes its facts
/// once, not a dozen times (in a PostgreSQL boot storm these rewrites were most of the
/// database's work). `at` is therefore "last confirmed", to the minute.
pub(crate) const OFFER_FACT: &str = concat!(
    "INSERT INTO machine_facts (machine_id, key, value, source, rank, at) VALUES ($1, $2, $3, $4, $5, $6) ",
    fact_upsert_rule!()
);

/// A sighting of a known machine moves `last_seen` only once [`crate::REFRESH_SECS`] have
/// passed (see [`OFFER_FACT`]); no row comes back then, and the id is looked up instead.
pub(crate) const OBSERVE_MACHINE: &str = concat!(
    "INSERT INTO machines (mac, state, first_seen, last_seen) VALUES ($1, 'unknown', $2, $2) ",
    "ON CONFLICT (mac) DO UPDATE SET last_seen = excluded.last_seen ",
    "WHERE excluded.last_seen >= machines.last_seen + 60 RETURNING id"
);

/// A boot: `$1` machine, `$2` image it booted, `$3` now.
pub(crate) const RECORD_BOOT: &str = concat!(
    "UPDATE machines SET last_booted_image = $2, ",
    "last_seen = CASE WHEN $3 > last_seen THEN $3 ELSE last_seen END WHERE id = $1"
);

/// [`RECORD_BOOT`] for a batch (`$1` ids, `$2` images: parallel arrays, distinct ids) on
/// PostgreSQL.
pub(crate) const RECORD_BOOTS_PG: &str = concat!(
    "UPDATE machines SET last_booted_image = b.image, ",
    "last_seen = CASE WHEN $3 > last_seen THEN $3 ELSE last_seen END ",
    "FROM unnest($1::bigint[], $2::text[]) AS b(id, image) WHERE machines.id = b.id"
);

/// [`OBSERVE_MACHINE`] for a whole batch of MACs (`$1`, in MAC order: rows are locked in that
/// order) on PostgreSQL.
pub(crate) const OBSERVE_MACHINES_PG: &str = concat!(
    "INSERT INTO machines (mac, state, first_seen, last_seen) ",
    "SELECT m, 'unknown', $2, $2 FROM unnest($1::text[]) WITH ORDINALITY AS t(m, n) ORDER BY n ",
    "ON CONFLICT (mac) DO UPDATE SET last_seen = excluded.last_seen ",
    "WHERE excluded.last_seen >= machines.last_seen + 60"
);

/// [`OFFER_FACT`] for a batch of facts (parallel arrays, one distinct (machine, key) per
/// element, in machine then key order) on PostgreSQL: the same rule, in one statement.
pub(crate) const OFFER_FACTS_PG: &str = concat!(
    "INSERT INTO machine_facts (machine_id, key, value, source, rank, at) ",
    "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[]) ",
    fact_upsert_rule!()
);

/// Implements [`crate::Store`] for a backend type that has `reader()` and `writer()` returning
/// its sqlx pools, given its row and connection types.
macro_rules! impl_store {
    ($ty:ty, row = $row:ty, conn = $conn:ty) => {
        impl_enrollment!($ty, conn = $conn);

        impl $ty {
            /// The facts of the machines `ids` (all machines when `None`), by machine.
            async fn facts_of(
                conn: &mut $conn,
                ids: Option<&[i64]>,
            ) -> Result<std::collections::HashMap<i64, tugboot_fleet::Facts>, $crate::StoreError> {
                let rows = match ids {
                    Some([id]) => sqlx::query(concat!("SELECT ", fact_cols!(), " FROM machine_facts WHERE machine_id = $1"))
                        .bind(*id)
                        .fetch_all(&mut *conn)
                        .await,
                    _ => sqlx::query(concat!("SELECT ", fact_cols!(), " FROM machine_facts ORDER BY machine_id"))
                        .fetch_all(&mut *conn)
                        .await,
                }
                .map_err($crate::StoreError::backend("machine facts"))?;
                let mut out: std::collections::HashMap<i64, tugboot_fleet::Facts> = std::collections::HashMap::new();
                for r in &rows {
                    let (id, key, fact) = $crate::rows::fact(r)?;
                    if ids.is_none_or(|ids| ids.contains(&id)) {
                        out.entry(id).or_default().offer(key, fact);
                    }
                }
                Ok(out)
            }

            /// One machine with its facts.
            async fn machine_on(conn: &mut $conn, id: i64) -> Result<Option<tugboot_fleet::Machine>, $crate::StoreError> {
                let row = sqlx::query(concat!("SELECT ", machine_cols!(), " FROM machines WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::StoreError::backend("get_machine"))?;
                let Some(row) = row else { return Ok(None) };
                let mut facts = Self::facts_of(conn, Some(&[id])).await?;
                $crate::rows::machine(&row, facts.remove(&id).unwrap_or_default()).map(Some)
            }

            /// The machine found by `sql` (one `$1` parameter), with its facts.
            async fn machine_where(&self, sql: &'static str, key: String) -> Result<Option<tugboot_fleet::Machine>, $crate::StoreError> {
                let mut conn = self.reader().acquire().await.map_err($crate::StoreError::backend("acquire"))?;
                let id: Option<(i64,)> = sqlx::query_as(sql)
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::StoreError::backend("find_machine"))?;
                match id {
                    Some((id,)) => Self::machine_on(&mut conn, id).await,
                    None => Ok(None),
                }
            }

            async fn offer_fact(
                conn: &mut $conn,
                id: i64,
                key: &tugboot_fleet::FactKey,
                fact: &tugboot_fleet::Fact,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query($crate::sql::OFFER_FACT)
                    .bind(id)
                    .bind(key.as_str())
                    .bind(&fact.value)
                    .bind(fact.source.as_str())
                    .bind(i64::from(fact.source.rank()))
                    .bind(fact.at)
                    .execute(&mut *conn)
                    .await
                    .map_err($crate::StoreError::backend("offer_fact"))?;
                Ok(())
            }

            /// The id of the machine a declaration names: by MAC, UUID, serial, then name.
            async fn declared_id(
                conn: &mut $conn,
                d: &tugboot_fleet::profiles::DeclaredMachine,
            ) -> Result<Option<i64>, $crate::StoreError> {
                let lookups: [(&'static str, Option<String>); 4] = [
                    ("SELECT id FROM machines WHERE mac = $1", d.mac.map(|m| m.to_string())),
                    ("SELECT id FROM machines WHERE smbios_uuid = $1 ORDER BY id LIMIT 1", d.uuid.map(|u| u.to_string())),
                    ("SELECT id FROM machines WHERE serial = $1 ORDER BY id LIMIT 1", d.serial.clone()),
                    ("SELECT id FROM machines WHERE name = $1", d.name.clone()),
                ];
                for (sql, key) in lookups {
                    let Some(key) = key else { continue };
                    let id: Option<(i64,)> = sqlx::query_as(sql)
                        .bind(key)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err($crate::StoreError::backend("declare_machines"))?;
                    if let Some((id,)) = id {
                        return Ok(Some(id));
                    }
                }
                Ok(None)
            }
        }

        impl $crate::Store for $ty {
            async fn observe(
                &self,
                sightings: &[$crate::Sighting],
                now: i64,
            ) -> Result<Vec<tugboot_fleet::MachineId>, $crate::StoreError> {
                if sightings.len() > $crate::model::MAX_SIGHTINGS_PER_BATCH {
                    return Err($crate::StoreError::invalid("sightings", "batch too large"));
                }
                for s in sightings {
                    s.validate()?;
                }
                // Rows are locked in MAC order: two servers writing overlapping batches never
                // wait on each other in a cycle.
                let mut order: Vec<usize> = (0..sightings.len()).collect();
                order.sort_by_key(|&i| sightings[i].mac);
                let mut tx = self.writer().begin().await.map_err($crate::StoreError::backend("observe"))?;
                let ids = Self::observe_in(&mut tx, sightings, &order, now).await?;
                tx.commit().await.map_err($crate::StoreError::backend("observe"))?;
                Ok(ids)
            }

            async fn declare_machines(
                &self,
                machines: &[tugboot_fleet::profiles::DeclaredMachine],
                now: i64,
            ) -> Result<$crate::DeclareSummary, $crate::StoreError> {
                use std::collections::HashMap;
                let mut summary = $crate::DeclareSummary::default();
                let mut tx = self.writer().begin().await.map_err($crate::StoreError::backend("declare_machines"))?;
                let mut wanted: HashMap<(i64, String), (tugboot_fleet::FactKey, tugboot_fleet::Fact)> = HashMap::new();
                for d in machines {
                    $crate::model::check_opt_len("name", d.name.as_deref(), $crate::MAX_NAME_LEN)?;
                    $crate::model::check_opt_len("serial", d.serial.as_deref(), $crate::MAX_NAME_LEN)?;
                    let found = Self::declared_id(&mut tx, d).await?;
                    if let Some(name) = &d.name {
                        // The file moved the name to this machine: take it from any other.
                        sqlx::query("UPDATE machines SET name = NULL WHERE name = $1 AND id <> $2")
                            .bind(name)
                            .bind(found.unwrap_or(-1))
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::StoreError::backend("declare_machines"))?;
                    }
                    let (mac, uuid) = (d.mac.map(|m| m.to_string()), d.uuid.map(|u| u.to_string()));
                    let id = match found {
                        Some(id) => {
                            sqlx::query(concat!(
                                "UPDATE machines SET name = COALESCE($2, name), smbios_uuid = COALESCE($3, smbios_uuid), ",
                                "serial = COALESCE($4, serial), mac = COALESCE(mac, $5) WHERE id = $1"
                            ))
                            .bind(id)
                            .bind(d.name.as_deref())
                            .bind(uuid)
                            .bind(d.serial.as_deref())
                            .bind(mac)
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::StoreError::backend("declare_machines"))?;
                            id
                        }
                        None => {
                            summary.created += 1;
                            let (id,): (i64,) = sqlx::query_as(concat!(
                                "INSERT INTO machines (name, mac, smbios_uuid, serial, state, first_seen, last_seen) ",
                                "VALUES ($1, $2, $3, $4, 'adopted', $5, $5) RETURNING id"
                            ))
                            .bind(d.name.as_deref())
                            .bind(mac)
                            .bind(uuid)
                            .bind(d.serial.as_deref())
                            .bind(now)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err($crate::StoreError::backend("declare_machines"))?;
                            id
                        }
                    };
                    for (key, fact) in d.facts(now).iter() {
                        wanted.insert((id, key.as_str().to_owned()), (key.clone(), fact.clone()));
                    }
                }
                let existing: Vec<(i64, String, String)> =
                    sqlx::query_as("SELECT machine_id, key, value FROM machine_facts WHERE source = 'declared:file'")
                        .fetch_all(&mut *tx)
                        .await
                        .map_err($crate::StoreError::backend("declare_machines"))?;
                let mut unchanged = std::collections::HashSet::new();
                for (id, key, value) in existing {
                    match wanted.get(&(id, key.clone())) {
                        Some((_, f)) if f.value == value => {
                            unchanged.insert((id, key));
                        }
                        Some(_) => {}
                        None => {
                            sqlx::query("DELETE FROM machine_facts WHERE machine_id = $1 AND key = $2 AND source = 'declared:file'")
                                .bind(id)
                                .bind(&key)
                                .execute(&mut *tx)
                                .await
                                .map_err($crate::StoreError::backend("declare_machines"))?;
                            summary.facts_withdrawn += 1;
                        }
                    }
                }
                let mut todo: Vec<_> = wanted.into_iter().filter(|(k, _)| !unchanged.contains(k)).collect();
                todo.sort_by(|a, b| a.0.cmp(&b.0));
                for ((id, _), (key, fact)) in todo {
                    Self::offer_fact(&mut tx, id, &key, &fact).await?;
                    summary.facts_written += 1;
                }
                tx.commit().await.map_err($crate::StoreError::backend("declare_machines"))?;
                Ok(summary)
            }

            async fn set_facts(
                &self,
                id: tugboot_fleet::MachineId,
                facts: &[(tugboot_fleet::FactKey, String)],
                source: tugboot_fleet::Source,
                now: i64,
            ) -> Result<tugboot_fleet::Machine, $crate::StoreError> {
                if !source.is_authenticated() {
                    return Err($crate::StoreError::invalid("source", "observations are recorded with observe"));
                }
                if facts.len() > tugboot_fleet::facts::MAX_FACTS {
                    return Err($crate::StoreError::invalid("facts", "too many"));
                }
                for (key, value) in facts {
                    tugboot_fleet::facts::check_value(value)
                        .map_err(|e| $crate::StoreError::invalid("fact value", format!("{key}: {e}")))?;
                }
                let mut tx = self.writer().begin().await.map_err($crate::StoreError::backend("set_facts"))?;
                let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM machines WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::StoreError::backend("set_facts"))?;
                if exists.is_none() {
                    return Err($crate::StoreError::NotFound { entity: "machine", key: id.to_string() });
                }
                for (key, value) in facts {
                    let fact = tugboot_fleet::Fact { value: value.clone(), source, at: now };
                    Self::offer_fact(&mut tx, id.0, key, &fact).await?;
                }
                let m = Self::machine_on(&mut tx, id.0).await?;
                tx.commit().await.map_err($crate::StoreError::backend("set_facts"))?;
                m.ok_or_else(|| $crate::StoreError::NotFound { entity: "machine", key: id.to_string() })
            }

            async fn withdraw_facts(
                &self,
                id: tugboot_fleet::MachineId,
                keys: &[tugboot_fleet::FactKey],
                source: tugboot_fleet::Source,
            ) -> Result<tugboot_fleet::Machine, $crate::StoreError> {
                let mut tx = self.writer().begin().await.map_err($crate::StoreError::backend("withdraw_facts"))?;
                for key in keys {
                    sqlx::query("DELETE FROM machine_facts WHERE machine_id = $1 AND key = $2 AND source = $3")
                        .bind(id.0)
                        .bind(key.as_str())
                        .bind(source.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::StoreError::backend("withdraw_facts"))?;
                }
                let m = Self::machine_on(&mut tx, id.0).await?;
                tx.commit().await.map_err($crate::StoreError::backend("withdraw_facts"))?;
                m.ok_or_else(|| $crate::StoreError::NotFound { entity: "machine", key: id.to_string() })
            }

            async fn get_machine(&self, id: tugboot_fleet::MachineId) -> Result<Option<tugboot_fleet::Machine>, $crate::StoreError> {
                let mut conn = self.reader().acquire().await.map_err($crate::StoreError::backend("acquire"))?;
                Self::machine_on(&mut conn, id.0).await
            }

            async fn find_machine_by_mac(&self, mac: tugboot_wire::Mac) -> Result<Option<tugboot_fleet::Machine>, $crate::StoreError> {
                self.machine_where("SELECT id FROM machines WHERE mac = $1", mac.to_string()).await
            }

            async fn find_machine_by_serial(&self, serial: &str) -> Result<Option<tugboot_fleet::Machine>, $crate::StoreError> {
                self.machine_where("SELECT id FROM machines WHERE serial = $1 ORDER BY id LIMIT 1", serial.to_owned())
                    .await
            }

            async fn list_machines(&self) -> Result<Vec<tugboot_fleet::Machine>, $crate::StoreError> {
                let mut conn = self.reader().acquire().await.map_err($crate::StoreError::backend("acquire"))?;
                let rows = sqlx::query(concat!("SELECT ", machine_cols!(), " FROM machines ORDER BY id"))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err($crate::StoreError::backend("list_machines"))?;
                let mut facts = Self::facts_of(&mut conn, None).await?;
                rows.iter()
                    .map(|r| {
                        let id = $crate::rows::RowExt::int(r, "id")?;
                        $crate::rows::machine(r, facts.remove(&id).unwrap_or_default())
                    })
                    .collect()
            }

            async fn set_machine_state(
                &self,
                id: tugboot_fleet::MachineId,
                state: tugboot_fleet::MachineState,
            ) -> Result<tugboot_fleet::Machine, $crate::StoreError> {
                let mut tx = self.writer().begin().await.map_err($crate::StoreError::backend("set_machine_state"))?;
                let done = sqlx::query("UPDATE machines SET state = $2 WHERE id = $1")
                    .bind(id.0)
                    .bind(state.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::StoreError::backend("set_machine_state"))?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound { entity: "machine", key: id.to_string() });
                }
                if state == tugboot_fleet::MachineState::Approved {
                    Self::end_enrollment_if_unused(&mut tx, id.0).await?;
                }
                let m = Self::machine_on(&mut tx, id.0).await?;
                tx.commit().await.map_err($crate::StoreError::backend("set_machine_state"))?;
                m.ok_or_else(|| $crate::StoreError::NotFound { entity: "machine", key: id.to_string() })
            }

            async fn record_boots(
                &self,
                boots: &[(tugboot_fleet::MachineId, String)],
                now: i64,
            ) -> Result<u64, $crate::StoreError> {
                if boots.len() > $crate::model::MAX_SIGHTINGS_PER_BATCH {
                    return Err($crate::StoreError::invalid("boots", "batch too large"));
                }
                // The last image per machine, in id order (rows locked in that order).
                let mut last = std::collections::BTreeMap::new();
                for (id, image) in boots {
                    $crate::model::check_len("image", image, 2 * $crate::MAX_NAME_LEN)?;
                    last.insert(id.0, image.as_str());
                }
                if last.is_empty() {
                    return Ok(0);
                }
                let (ids, images): (Vec<i64>, Vec<&str>) = last.into_iter().unzip();
                let mut tx = self.writer().begin().await.map_err($crate::StoreError::backend("record_boots"))?;
                let n = Self::record_boots_in(&mut tx, &ids, &images, now).await?;
                tx.commit().await.map_err($crate::StoreError::backend("record_boots"))?;
                Ok(n)
            }

            async fn delete_machine(&self, id: tugboot_fleet::MachineId) -> Result<bool, $crate::StoreError> {
                let done = sqlx::query("DELETE FROM machines WHERE id = $1")
                    .bind(id.0)
                    .execute(self.writer())
                    .await
                    .map_err($crate::StoreError::backend("delete_machine"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn image_outcomes(&self, name: &str, version: u64) -> Result<Vec<$crate::DeviceVerdict>, $crate::StoreError> {
                let Ok(version) = i64::try_from(version) else { return Ok(Vec::new()) };
                let rows: Vec<(i64, String, i64)> = sqlx::query_as(concat!(
                    "SELECT r.device_id, r.outcome, r.received_at FROM reports r ",
                    "WHERE r.outcome_name = $1 AND r.outcome_version = $2 AND r.outcome IS NOT NULL AND r.seq = ",
                    "(SELECT MAX(r2.seq) FROM reports r2 WHERE r2.device_id = r.device_id AND r2.outcome_name = $1 ",
                    "AND r2.outcome_version = $2 AND r2.outcome IS NOT NULL) ORDER BY r.device_id"
                ))
                .bind(name)
                .bind(version)
                .fetch_all(self.reader())
                .await
                .map_err($crate::StoreError::backend("image_outcomes"))?;
                rows.into_iter()
                    .map(|(device, kind, at)| {
                        Ok($crate::DeviceVerdict {
                            device: tugboot_fleet::MachineId(device),
                            kind: $crate::OutcomeKind::from_db(&kind)?,
                            at,
                        })
                    })
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

            async fn list_images(&self, name: Option<&str>) -> Result<Vec<$crate::Image>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", image_cols!(), " FROM images WHERE ($1 IS NULL OR name = $1) ORDER BY name, version"))
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

            async fn create_rollout(&self, rollout: &tugboot_fleet::rollout::NewRollout, now: i64) -> Result<tugboot_fleet::rollout::RolloutRecord, $crate::StoreError> {
                rollout
                    .validate()
                    .map_err(|e| $crate::StoreError::invalid(e.field, e.reason))?;
                $crate::model::check_len("image name", &rollout.image_name, $crate::MAX_NAME_LEN)?;
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

            async fn get_rollout(&self, id: tugboot_fleet::rollout::RolloutId) -> Result<Option<tugboot_fleet::rollout::RolloutRecord>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", rollout_cols!(), " FROM rollouts WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("get_rollout"))?
                    .map(|r| $crate::rows::rollout(&r))
                    .transpose()
            }

            async fn list_rollouts(&self) -> Result<Vec<tugboot_fleet::rollout::RolloutRecord>, $crate::StoreError> {
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
                t: &tugboot_fleet::rollout::RolloutTransition,
                now: i64,
            ) -> Result<Option<tugboot_fleet::rollout::RolloutRecord>, $crate::StoreError> {
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
                let booted = report.booted_image();
                if let Some(image) = &booted {
                    $crate::model::check_len("image", image, 2 * $crate::MAX_NAME_LEN)?;
                }
                let insert = sqlx::query(concat!(
                    "INSERT INTO reports (",
                    report_cols!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (device_id, report_id) DO NOTHING"
                ))
                .bind(report.device.0)
                .bind(&report.report_id)
                .bind(&report.boot_id)
                .bind(report.slot.map($crate::Slot::as_str))
                .bind($crate::model::u64_to_db("image_version", report.image_version)?)
                .bind(checks)
                .bind($crate::model::u64_to_db("uptime_secs", report.uptime_secs)?)
                .bind(report.last_error.as_deref())
                .bind(report.received_at)
                .bind(report.outcome.as_ref().map(|o| o.kind.as_str()))
                .bind(report.outcome.as_ref().map(|o| o.image_name.as_str()))
                .bind(report.outcome.as_ref().map(|o| $crate::model::u64_to_db("outcome_version", o.image_version)).transpose()?);
                let insert_error = |e: sqlx::Error| {
                    if $crate::error::is_foreign_key_violation(&e) {
                        $crate::StoreError::NotFound { entity: "device", key: report.device.to_string() }
                    } else {
                        $crate::StoreError::Backend { op: "insert_report", source: e }
                    }
                };
                let outcome = |rows: u64| if rows > 0 {
                    $crate::WriteOutcome::Inserted
                } else {
                    $crate::WriteOutcome::AlreadyPresent
                };
                let Some(image) = booted else {
                    let done = insert.execute(self.writer()).await.map_err(insert_error)?;
                    return Ok(outcome(done.rows_affected()));
                };
                // The report and the boot it tells of in one transaction: a report on record
                // always has its effect, and its retry (already present) changes nothing.
                let mut tx = self.writer().begin().await.map_err($crate::StoreError::backend("insert_report"))?;
                let done = insert.execute(&mut *tx).await.map_err(insert_error)?;
                if done.rows_affected() == 0 {
                    return Ok($crate::WriteOutcome::AlreadyPresent);
                }
                sqlx::query(concat!(
                    "UPDATE machines SET last_booted_image = $2, ",
                    "last_seen = CASE WHEN $3 > last_seen THEN $3 ELSE last_seen END WHERE id = $1"
                ))
                .bind(report.device.0)
                .bind(&image)
                .bind(report.received_at)
                .execute(&mut *tx)
                .await
                .map_err($crate::StoreError::backend("insert_report"))?;
                tx.commit().await.map_err($crate::StoreError::backend("insert_report"))?;
                Ok($crate::WriteOutcome::Inserted)
            }

            async fn get_report(
                &self,
                device: tugboot_fleet::MachineId,
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

            async fn list_reports(&self, device: tugboot_fleet::MachineId, limit: u32) -> Result<Vec<$crate::Report>, $crate::StoreError> {
                sqlx::query(concat!(
                    "SELECT ",
                    report_cols!(),
                    " FROM reports WHERE device_id = $1 ORDER BY seq DESC LIMIT $2"
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

            async fn list_device_certs(&self, device: tugboot_fleet::MachineId) -> Result<Vec<$crate::DeviceCert>, $crate::StoreError> {
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

            async fn create_enrollment_token(&self, token: &$crate::NewEnrollmentToken) -> Result<(), $crate::StoreError> {
                self.create_token_impl(token).await
            }

            async fn list_enrollment_tokens(&self) -> Result<Vec<$crate::EnrollmentToken>, $crate::StoreError> {
                self.list_tokens_impl().await
            }

            async fn enroll<F>(
                &self,
                attempt: &$crate::EnrollAttempt,
                issue: F,
            ) -> Result<$crate::EnrollOutcome, $crate::StoreError>
            where
                F: FnOnce(tugboot_fleet::MachineId) -> Result<$crate::EnrolledCert, String> + Send,
            {
                self.enroll_impl(attempt, issue).await
            }
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn refresh_interval_in_the_sql_is_refresh_secs() {
        let plus = format!("+ {}", crate::REFRESH_SECS);
        assert!(super::OFFER_FACT.contains(&plus));
        assert!(super::OBSERVE_MACHINE.contains(&plus));
    }
}

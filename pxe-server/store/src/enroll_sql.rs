//! The enrollment statements (schema v3), shared by both backends like `sql.rs`: written once,
//! expanded for each backend by `impl_store!` through [`impl_enrollment!`].
//!
//! [`crate::Store::enroll`] is one transaction. Its decisions are re-checked by the database:
//! the token is spent with a compare-and-set `UPDATE … WHERE used_at IS NULL AND expires_at >
//! now`, and the enrollment row meets two partial unique indexes (one active enrollment per
//! machine, one per key) and `UNIQUE (token_hash)`. On SQLite the single writer connection
//! runs one such transaction at a time; on PostgreSQL two concurrent ones may both pass the
//! reads, and the loser's insert then fails on an index: its transaction is rolled back (no
//! certificate, no spent token) and the request is classified again against what the winner
//! committed.

/// Columns of `enrollment_tokens`.
macro_rules! token_cols {
    () => {
        "hash, created_at, expires_at, bound_mac, bound_serial, used_at, used_by"
    };
}

macro_rules! impl_enrollment {
    ($ty:ty, conn = $conn:ty) => {
        /// Why an enrollment transaction stopped early: a decision (rolled back, nothing
        /// written) or a failure.
        enum EnrollStop {
            /// A unique index refused a row: another request won a race.
            Conflict(sqlx::Error),
            Failed($crate::StoreError),
        }

        impl From<$crate::StoreError> for EnrollStop {
            fn from(e: $crate::StoreError) -> Self {
                Self::Failed(e)
            }
        }

        fn enroll_db(op: &'static str) -> impl FnOnce(sqlx::Error) -> EnrollStop {
            move |e| {
                if $crate::error::is_unique_violation(&e) {
                    EnrollStop::Conflict(e)
                } else {
                    EnrollStop::Failed($crate::StoreError::Backend { op, source: e })
                }
            }
        }

        impl $ty {
            async fn create_token_impl(
                &self,
                t: &$crate::enrollment::NewEnrollmentToken,
            ) -> Result<(), $crate::StoreError> {
                t.validate()?;
                sqlx::query(concat!(
                    "INSERT INTO enrollment_tokens (hash, created_at, expires_at, bound_mac, bound_serial) ",
                    "VALUES ($1, $2, $3, $4, $5)"
                ))
                .bind(&t.hash)
                .bind(t.created_at)
                .bind(t.expires_at)
                .bind(t.bound_mac.map(|m| m.to_string()))
                .bind(t.bound_serial.as_deref())
                .execute(self.writer())
                .await
                .map_err(|e| {
                    if $crate::error::is_unique_violation(&e) {
                        $crate::StoreError::AlreadyExists { entity: "enrollment token", key: t.hash.clone() }
                    } else {
                        $crate::StoreError::Backend { op: "create_enrollment_token", source: e }
                    }
                })?;
                Ok(())
            }

            async fn list_tokens_impl(
                &self,
            ) -> Result<Vec<$crate::enrollment::EnrollmentToken>, $crate::StoreError> {
                sqlx::query(concat!("SELECT ", token_cols!(), " FROM enrollment_tokens ORDER BY created_at, hash"))
                    .fetch_all(self.reader())
                    .await
                    .map_err($crate::StoreError::backend("list_enrollment_tokens"))?
                    .iter()
                    .map($crate::rows::enrollment_token)
                    .collect()
            }

            /// An earlier enrollment of the same key: the same machine within the replay window
            /// gets its certificate again; another machine is refused.
            async fn repeated_enrollment(
                conn: &mut $conn,
                a: &$crate::enrollment::EnrollAttempt,
            ) -> Result<Option<$crate::enrollment::EnrollOutcome>, $crate::StoreError> {
                use $crate::enrollment::{EnrollOutcome, EnrollRefusal, EnrolledCert};
                let row: Option<(i64, String, Option<String>, i64, i64, Option<i64>, Option<String>)> = sqlx::query_as(concat!(
                    "SELECT e.device_id, e.cert_serial, e.cert_pem, e.enrolled_at, c.not_after, c.revoked_at, m.mac ",
                    "FROM enrollments e JOIN device_certs c ON c.serial = e.cert_serial ",
                    "JOIN machines m ON m.id = e.device_id WHERE e.key_sha256 = $1 AND e.active = $2"
                ))
                .bind(&a.key_sha256)
                .bind(true)
                .fetch_optional(&mut *conn)
                .await
                .map_err($crate::StoreError::backend("enroll"))?;
                let Some((device, serial, pem, enrolled_at, not_after, revoked_at, mac)) = row else {
                    return Ok(None);
                };
                let device = tugboot_fleet::MachineId(device);
                let same_machine = mac.is_some_and(|m| m == a.mac.to_string());
                if !same_machine {
                    return Ok(Some(EnrollOutcome::Refused { device: None, reason: EnrollRefusal::KeyInUse }));
                }
                let fresh = revoked_at.is_none()
                    && not_after > a.now
                    && enrolled_at.saturating_add(a.replay_window_secs) >= a.now;
                Ok(Some(match pem {
                    Some(pem) if fresh => EnrollOutcome::Issued {
                        device,
                        cert: EnrolledCert { serial, pem, not_after },
                        repeated: true,
                    },
                    _ => EnrollOutcome::Refused { device: Some(device), reason: EnrollRefusal::AlreadyEnrolled },
                }))
            }

            async fn has_active_enrollment(conn: &mut $conn, id: i64) -> Result<bool, $crate::StoreError> {
                let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM enrollments WHERE device_id = $1 AND active = $2")
                    .bind(id)
                    .bind(true)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::StoreError::backend("enroll"))?;
                Ok(row.is_some())
            }

            async fn machine_by_mac(conn: &mut $conn, mac: &str) -> Result<Option<(i64, tugboot_fleet::MachineState)>, $crate::StoreError> {
                let row: Option<(i64, String)> = sqlx::query_as("SELECT id, state FROM machines WHERE mac = $1")
                    .bind(mac)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::StoreError::backend("enroll"))?;
                row.map(|(id, state)| {
                    state
                        .parse::<tugboot_fleet::MachineState>()
                        .map(|s| (id, s))
                        .map_err(|e| $crate::StoreError::corrupt("machines", "state", e))
                })
                .transpose()
            }

            /// Why a token cannot be used now, if it cannot.
            async fn token_refusal(
                conn: &mut $conn,
                a: &$crate::enrollment::EnrollAttempt,
                hash: &str,
            ) -> Result<Option<$crate::enrollment::EnrollRefusal>, $crate::StoreError> {
                use $crate::enrollment::EnrollRefusal;
                let row = sqlx::query(concat!("SELECT ", token_cols!(), " FROM enrollment_tokens WHERE hash = $1"))
                    .bind(hash)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::StoreError::backend("enroll"))?;
                let Some(row) = row else { return Ok(Some(EnrollRefusal::UnknownToken)) };
                let t = $crate::rows::enrollment_token(&row)?;
                Ok(if t.used_at.is_some() {
                    Some(EnrollRefusal::TokenUsed)
                } else if t.expires_at <= a.now {
                    Some(EnrollRefusal::TokenExpired)
                } else if t.bound_mac.is_some_and(|m| m != a.mac)
                    || t.bound_serial.as_ref().is_some_and(|s| a.serial.as_ref() != Some(s))
                {
                    Some(EnrollRefusal::TokenBound)
                } else {
                    None
                })
            }

            /// Creates the machine of `mac` in `state` unless it exists (another request may
            /// create it at the same moment: the insert then does nothing), and returns it.
            async fn machine_for_enrollment(
                conn: &mut $conn,
                mac: &str,
                state: tugboot_fleet::MachineState,
                now: i64,
            ) -> Result<(i64, tugboot_fleet::MachineState), $crate::StoreError> {
                sqlx::query(concat!(
                    "INSERT INTO machines (mac, state, first_seen, last_seen) VALUES ($1, $2, $3, $3) ",
                    "ON CONFLICT (mac) DO NOTHING"
                ))
                .bind(mac)
                .bind(state.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err($crate::StoreError::backend("enroll"))?;
                Self::machine_by_mac(conn, mac)
                    .await?
                    .ok_or_else(|| $crate::StoreError::NotFound { entity: "machine", key: mac.to_owned() })
            }

            async fn record_enrollment_facts(
                conn: &mut $conn,
                id: i64,
                a: &$crate::enrollment::EnrollAttempt,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE machines SET last_seen = CASE WHEN $2 > last_seen THEN $2 ELSE last_seen END WHERE id = $1")
                    .bind(id)
                    .bind(a.now)
                    .execute(&mut *conn)
                    .await
                    .map_err($crate::StoreError::backend("enroll"))?;
                for (key, fact) in a.facts.iter() {
                    Self::offer_fact(conn, id, key, fact).await?;
                }
                Ok(())
            }

            /// The transaction of [`crate::Store::enroll`]; `Ok` outcomes other than issued or
            /// recorded-pending are returned before anything is written (the caller drops the
            /// transaction: rolled back).
            async fn enroll_in<F>(
                tx: &mut $conn,
                a: &$crate::enrollment::EnrollAttempt,
                issue: F,
            ) -> Result<($crate::enrollment::EnrollOutcome, bool), EnrollStop>
            where
                F: FnOnce(tugboot_fleet::MachineId) -> Result<$crate::enrollment::EnrolledCert, String> + Send,
            {
                use tugboot_fleet::{MachineId, MachineState};
                use $crate::enrollment::{EnrollOutcome, EnrollRefusal};
                let refused = |device: Option<i64>, reason| {
                    Ok((EnrollOutcome::Refused { device: device.map(MachineId), reason }, false))
                };
                let mac = a.mac.to_string();
                let existing = Self::machine_by_mac(tx, &mac).await?;
                if existing.is_some_and(|(_, s)| s == MachineState::Revoked) {
                    return refused(existing.map(|m| m.0), EnrollRefusal::MachineRevoked);
                }
                if let Some(out) = Self::repeated_enrollment(tx, a).await? {
                    return Ok((out, false));
                }
                let id = if let Some(hash) = &a.token_hash {
                    if let Some(r) = Self::token_refusal(tx, a, hash).await? {
                        return refused(existing.map(|m| m.0), r);
                    }
                    if let Some((id, _)) = existing
                        && Self::has_active_enrollment(tx, id).await?
                    {
                        return refused(Some(id), EnrollRefusal::AlreadyEnrolled);
                    }
                    let (id, state) = Self::machine_for_enrollment(tx, &mac, MachineState::Approved, a.now).await?;
                    match state {
                        MachineState::Revoked => return refused(Some(id), EnrollRefusal::MachineRevoked),
                        MachineState::Approved => {}
                        _ => {
                            sqlx::query("UPDATE machines SET state = $2 WHERE id = $1")
                                .bind(id)
                                .bind(MachineState::Approved.as_str())
                                .execute(&mut *tx)
                                .await
                                .map_err(enroll_db("enroll"))?;
                        }
                    }
                    // The compare-and-set that spends the token, re-checking what was read.
                    let spent: Option<(String,)> = sqlx::query_as(concat!(
                        "UPDATE enrollment_tokens SET used_at = $2, used_by = $3 ",
                        "WHERE hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING hash"
                    ))
                    .bind(hash)
                    .bind(a.now)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(enroll_db("enroll"))?;
                    if spent.is_none() {
                        return refused(Some(id), EnrollRefusal::TokenUsed);
                    }
                    id
                } else {
                    match existing {
                        Some((id, MachineState::Approved)) => {
                            if Self::has_active_enrollment(tx, id).await? {
                                return refused(Some(id), EnrollRefusal::AlreadyEnrolled);
                            }
                            id
                        }
                        Some((id, _)) => {
                            // Known machine, not approved: record the request once; a poll
                            // writes nothing.
                            let done = sqlx::query(concat!(
                                "INSERT INTO enrollment_requests (machine_id, key_sha256, first_at) VALUES ($1, $2, $3) ",
                                "ON CONFLICT (machine_id) DO NOTHING"
                            ))
                            .bind(id)
                            .bind(&a.key_sha256)
                            .bind(a.now)
                            .execute(&mut *tx)
                            .await
                            .map_err(enroll_db("enroll"))?;
                            let recorded = done.rows_affected() > 0;
                            if recorded {
                                Self::record_enrollment_facts(tx, id, a).await?;
                            }
                            return Ok((EnrollOutcome::Pending { device: MachineId(id), recorded }, recorded));
                        }
                        None => {
                            let (pending,): (i64,) = sqlx::query_as(concat!(
                                "SELECT COUNT(*) FROM enrollment_requests r JOIN machines m ON m.id = r.machine_id ",
                                "WHERE m.state = 'unknown'"
                            ))
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(enroll_db("enroll"))?;
                            if u64::try_from(pending).unwrap_or(0) >= a.max_pending {
                                return refused(None, EnrollRefusal::PendingFull);
                            }
                            let (id, state) = Self::machine_for_enrollment(tx, &mac, MachineState::Unknown, a.now).await?;
                            if state == MachineState::Approved {
                                // Approved at this very moment by another path: enroll on the
                                // next request, like any approved machine.
                                return Ok((EnrollOutcome::Pending { device: MachineId(id), recorded: false }, false));
                            }
                            sqlx::query(concat!(
                                "INSERT INTO enrollment_requests (machine_id, key_sha256, first_at) VALUES ($1, $2, $3) ",
                                "ON CONFLICT (machine_id) DO NOTHING"
                            ))
                            .bind(id)
                            .bind(&a.key_sha256)
                            .bind(a.now)
                            .execute(&mut *tx)
                            .await
                            .map_err(enroll_db("enroll"))?;
                            Self::record_enrollment_facts(tx, id, a).await?;
                            return Ok((EnrollOutcome::Pending { device: MachineId(id), recorded: true }, true));
                        }
                    }
                };
                let cert = issue(MachineId(id))
                    .map_err(|reason| $crate::StoreError::InvalidInput { field: "certificate", reason })?;
                $crate::DeviceCert {
                    serial: cert.serial.clone(),
                    device: MachineId(id),
                    issued_at: a.now,
                    not_after: cert.not_after,
                    revoked_at: None,
                }
                .validate()?;
                sqlx::query(concat!("INSERT INTO device_certs (", cert_cols!(), ") VALUES ($1, $2, $3, $4, NULL)"))
                    .bind(&cert.serial)
                    .bind(id)
                    .bind(a.now)
                    .bind(cert.not_after)
                    .execute(&mut *tx)
                    .await
                    .map_err(enroll_db("enroll"))?;
                sqlx::query(concat!(
                    "INSERT INTO enrollments (device_id, cert_serial, key_sha256, token_hash, cert_pem, enrolled_at, active) ",
                    "VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(id)
                .bind(&cert.serial)
                .bind(&a.key_sha256)
                .bind(a.token_hash.as_deref())
                .bind(&cert.pem)
                .bind(a.now)
                .bind(true)
                .execute(&mut *tx)
                .await
                .map_err(enroll_db("enroll"))?;
                sqlx::query("DELETE FROM enrollment_requests WHERE machine_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(enroll_db("enroll"))?;
                Self::record_enrollment_facts(tx, id, a).await?;
                Ok((EnrollOutcome::Issued { device: MachineId(id), cert, repeated: false }, true))
            }

            async fn enroll_impl<F>(
                &self,
                a: &$crate::enrollment::EnrollAttempt,
                issue: F,
            ) -> Result<$crate::enrollment::EnrollOutcome, $crate::StoreError>
            where
                F: FnOnce(tugboot_fleet::MachineId) -> Result<$crate::enrollment::EnrolledCert, String> + Send,
            {
                use $crate::enrollment::{EnrollOutcome, EnrollRefusal};
                a.validate()?;
                let mut tx = self.begin_write().await.map_err($crate::StoreError::backend("enroll"))?;
                let conflict = match Self::enroll_in(&mut tx, a, issue).await {
                    Ok((outcome, true)) => {
                        tx.commit().await.map_err($crate::StoreError::backend("enroll"))?;
                        return Ok(outcome);
                    }
                    // Nothing written: roll back (dropping the transaction would too).
                    Ok((outcome, false)) => {
                        tx.rollback().await.map_err($crate::StoreError::backend("enroll"))?;
                        return Ok(outcome);
                    }
                    Err(EnrollStop::Failed(e)) => return Err(e),
                    Err(EnrollStop::Conflict(e)) => e,
                };
                let _ = tx.rollback().await;
                // Another request committed first: answer against what it wrote.
                let mut conn = self.writer().acquire().await.map_err($crate::StoreError::backend("acquire"))?;
                if let Some(out) = Self::repeated_enrollment(&mut conn, a).await? {
                    return Ok(out);
                }
                if let Some((id, _)) = Self::machine_by_mac(&mut conn, &a.mac.to_string()).await?
                    && Self::has_active_enrollment(&mut conn, id).await?
                {
                    return Ok(EnrollOutcome::Refused {
                        device: Some(tugboot_fleet::MachineId(id)),
                        reason: EnrollRefusal::AlreadyEnrolled,
                    });
                }
                if let Some(hash) = &a.token_hash
                    && let Some(reason) = Self::token_refusal(&mut conn, a, hash).await?
                {
                    return Ok(EnrollOutcome::Refused { device: None, reason });
                }
                Err($crate::StoreError::Backend { op: "enroll", source: conflict })
            }

            /// With an approval: a machine that holds no unrevoked certificate any more ends its
            /// enrollment, so it may enroll once again. One with a live certificate keeps it.
            async fn end_enrollment_if_unused(conn: &mut $conn, id: i64) -> Result<(), $crate::StoreError> {
                sqlx::query(concat!(
                    "UPDATE enrollments SET active = $2 WHERE device_id = $1 AND active = $3 AND NOT EXISTS ",
                    "(SELECT 1 FROM device_certs c WHERE c.device_id = $1 AND c.revoked_at IS NULL)"
                ))
                .bind(id)
                .bind(false)
                .bind(true)
                .execute(&mut *conn)
                .await
                .map_err($crate::StoreError::backend("set_machine_state"))?;
                Ok(())
            }
        }
    };
}

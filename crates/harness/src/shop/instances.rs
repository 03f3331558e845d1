//! Several instances of one service, as processes: start, stop (SIGTERM), kill
//! (SIGKILL), freeze (SIGSTOP) and thaw (SIGCONT) each by name, and see which
//! partitions each one holds — the faults the scale-out tests inject.
//!
//! The instance a service runs as by default (named after the service) is the one
//! `start_service` starts; these are the others, named by the test.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{terminate, Mode, Running, Service, Shop};
use crate::HarnessError;

/// One instance as the service's micro endpoint describes it (`$SRV.INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub instance: String,
    pub id: String,
    pub version: String,
}

impl Shop {
    /// Starts another instance of `service` named `instance`, as a process, and waits
    /// until it answers INFO under that name. One already running is left as it is; one
    /// that exited on its own is started again.
    pub async fn start_instance(
        &mut self,
        service: Service,
        instance: &str,
    ) -> Result<(), HarnessError> {
        self.start_instance_with(service, instance, &[]).await
    }

    /// [`Shop::start_instance`] with extra environment for this process only (a new
    /// build's `SHOP_RELEASE`, say).
    pub async fn start_instance_with(
        &mut self,
        service: Service,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Result<(), HarnessError> {
        // With crash points on, a process may abort while it starts; that is the point of
        // them, so start it again (as `start_service` does).
        let attempts = if self.config.crashpoints.is_some() {
            20
        } else {
            1
        };
        let mut last = None;
        for _ in 0..attempts {
            match self.start_instance_once(service, instance, env).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::ServiceNotReady {
            service: instance.to_owned(),
            log_tail: String::new(),
        }))
    }

    async fn start_instance_once(
        &mut self,
        service: Service,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Result<(), HarnessError> {
        let key = (service, instance.to_owned());
        if self.instances.contains_key(&key) {
            if !self.instance_exited(service, instance) {
                return Ok(());
            }
            // It exited on its own (a crash point, say): forget it and start it again.
            // Kept, it would make "start it again" a silent no-op.
            self.instances.remove(&key);
        }
        let Mode::Processes { bin_dir } = self.config.mode.clone() else {
            return Err(HarnessError::ServiceFailed {
                service: instance.to_owned(),
                reason: "named instances run as processes only".into(),
            });
        };
        if service == Service::Payment {
            self.start_gateway().await?;
        }
        let saved = self.config.env.clone();
        self.config
            .env
            .extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let running = self.spawn_process_as(service, &bin_dir, Some(instance));
        self.config.env = saved;
        let running = running?;
        self.instances.insert(key.clone(), running);
        let deadline = tokio::time::Instant::now() + self.config.ready_within;
        loop {
            if self.instance_exited(service, instance) {
                self.instances.remove(&key);
                return Err(HarnessError::ServiceFailed {
                    service: instance.to_owned(),
                    reason: format!("exited while starting:\n{}", self.instance_log(instance)),
                });
            }
            if self
                .instances_of(service)
                .await?
                .iter()
                .any(|i| i.instance == instance)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::ServiceNotReady {
                    service: instance.to_owned(),
                    log_tail: self.instance_log(instance),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops an instance with SIGTERM and waits for it to exit (it hands its partitions
    /// over first); an error if it did not exit 0.
    pub async fn stop_instance(
        &mut self,
        service: Service,
        instance: &str,
    ) -> Result<(), HarnessError> {
        match self.instances.remove(&(service, instance.to_owned())) {
            Some(Running::Process { mut child, .. }) => {
                terminate(&mut child)
                    .await
                    .map_err(|reason| HarnessError::ServiceFailed {
                        service: instance.to_owned(),
                        reason,
                    })
            }
            _ => Ok(()),
        }
    }

    /// Kills an instance with SIGKILL.
    pub async fn kill_instance(
        &mut self,
        service: Service,
        instance: &str,
    ) -> Result<(), HarnessError> {
        if let Some(Running::Process { mut child, .. }) =
            self.instances.remove(&(service, instance.to_owned()))
        {
            let _ = child.kill().await;
        }
        Ok(())
    }

    /// Stops an instance's process with SIGSTOP: it holds its connections and answers
    /// nothing, like a long pause; [`Shop::thaw_instance`] resumes it.
    pub async fn freeze_instance(
        &mut self,
        service: Service,
        instance: &str,
    ) -> Result<(), HarnessError> {
        self.signal_instance(service, instance, "STOP").await
    }

    /// SIGKILLs an instance's process and leaves it known to the harness, as a crash
    /// would (a crash point, the OOM killer): unlike [`Shop::kill_instance`], the harness
    /// learns of it only by looking ([`Shop::instance_exited`]), and
    /// [`Shop::start_instance`] then starts it again.
    pub async fn crash_instance(
        &mut self,
        service: Service,
        instance: &str,
    ) -> Result<(), HarnessError> {
        self.signal_instance(service, instance, "KILL").await
    }

    /// Resumes a frozen instance with SIGCONT.
    pub async fn thaw_instance(
        &mut self,
        service: Service,
        instance: &str,
    ) -> Result<(), HarnessError> {
        self.signal_instance(service, instance, "CONT").await
    }

    async fn signal_instance(
        &mut self,
        service: Service,
        instance: &str,
        signal: &str,
    ) -> Result<(), HarnessError> {
        let pid = match self.instances.get(&(service, instance.to_owned())) {
            Some(Running::Process { child, .. }) => child.id(),
            _ => None,
        };
        let Some(pid) = pid else {
            return Err(HarnessError::ServiceFailed {
                service: instance.to_owned(),
                reason: "not running".into(),
            });
        };
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .map_err(|e| HarnessError::io(format!("sending SIG{signal} to {instance}"), e))?;
        if !status.success() {
            return Err(HarnessError::io(
                format!("sending SIG{signal} to {instance}"),
                std::io::Error::other("the `kill` command failed"),
            ));
        }
        Ok(())
    }

    /// Whether a named instance's process has exited.
    pub fn instance_exited(&mut self, service: Service, instance: &str) -> bool {
        match self.instances.get_mut(&(service, instance.to_owned())) {
            Some(Running::Process { child, .. }) => matches!(child.try_wait(), Ok(Some(_))),
            _ => true,
        }
    }

    /// The named instances started and not stopped, per service.
    pub fn named_instances(&self) -> BTreeMap<Service, Vec<String>> {
        let mut out: BTreeMap<Service, Vec<String>> = BTreeMap::new();
        for (service, name) in self.instances.keys() {
            out.entry(*service).or_default().push(name.clone());
        }
        out
    }

    /// The last lines a named instance wrote.
    pub fn instance_log(&self, instance: &str) -> String {
        let path = self.data_dir.join(format!("{instance}.log"));
        std::fs::read_to_string(path)
            .map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            })
            .unwrap_or_default()
    }

    /// Every instance of `service` that answers INFO now (the micro protocol's
    /// discovery: one request, every instance replies).
    pub async fn instances_of(&self, service: Service) -> Result<Vec<InstanceInfo>, HarnessError> {
        let client = crate::connect(&self.nats_url).await?;
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| {
            HarnessError::io("subscribing for INFO replies", std::io::Error::other(e))
        })?;
        client
            .publish_with_reply(format!("$SRV.INFO.{}", service.name()), inbox, "".into())
            .await
            .map_err(|e| HarnessError::io("asking for INFO", std::io::Error::other(e)))?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        use futures::StreamExt;
        while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
            let Ok(info) = serde_json::from_slice::<serde_json::Value>(&reply.payload) else {
                continue;
            };
            out.push(InstanceInfo {
                instance: info["metadata"]["instance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                id: info["id"].as_str().unwrap_or_default().to_owned(),
                version: info["version"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(out)
    }
}

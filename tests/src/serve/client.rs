//! The caller's side: `tollgate run --connect SOCKET ...` run as a test user, the real
//! client a platform's worker runs.

use std::{
    ffi::{OsStr, OsString},
    path::Path,
    process::Command,
};

use super::accounts::TestUser;
use crate::{
    sandbox::{output, Finished, Running, HANG_LIMIT},
    tollgate_path,
};

/// One `tollgate run --connect SOCKET ...` as a test user.
pub struct Client<'a> {
    socket: &'a Path,
    user: &'a TestUser,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl<'a> Client<'a> {
    pub(super) fn new(socket: &'a Path, user: &'a TestUser) -> Client<'a> {
        Client {
            socket,
            user,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// `--team NAME`.
    pub fn team(self, team: &str) -> Self {
        self.arg("--team").arg(team)
    }

    /// Any option of `tollgate run`, placed before `--`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// A variable of the client's own environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The whole command line, as the user.
    pub fn command<I, S>(&self, cmd: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.user.command(tollgate_path());
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("run")
            .arg("--connect")
            .arg(self.socket)
            .args(&self.args)
            .arg("--")
            .args(cmd);
        command
    }

    /// Runs `cmd` to completion (stdin empty), capturing the client's stdout and stderr:
    /// the pipes the sandbox writes to, since the client passes its own.
    pub fn run<I, S>(&self, cmd: I) -> Finished
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output(&mut self.command(cmd), Some(b""), HANG_LIMIT)
    }

    /// Starts `cmd`, reading the client's stdout line by line.
    pub fn spawn<I, S>(&self, cmd: I) -> Running
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Running::spawn(&mut self.command(cmd))
    }
}

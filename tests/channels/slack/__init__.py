"""Tests of the Slack channel: conversion, the adapter against a wire-level fake."""

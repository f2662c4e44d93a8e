"""The Rota executor: joins the masters, holds a lease, runs tasks."""
